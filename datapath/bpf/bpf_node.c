/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The node-wide maps, without programs: NodeDatapath::load loads this
 * object with <root>/node/maps as its pin directory, which creates and pins
 * every map of the packet path that is not per endpoint. Each tc object
 * then finds them there (its loader points these names at the node's pins).
 * A feature that adds a node-wide map includes its header here.
 */
#include "lib/node.h"
#include "lib/conntrack.h"
#include "lib/lb.h"
#include "lib/prefilter.h"
