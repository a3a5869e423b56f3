// Command istioctl-json prints what istioctl 1.27's `proxy-config ... -o json`
// prints for a config dump, with the same Go libraries istioctl uses for it:
// the dump is read into Envoy's messages (here dynamic ones, from a file
// descriptor set of Envoy's API), each view's resources are picked and sorted
// as istioctl's writers do, and printed through the legacy
// github.com/golang/protobuf/jsonpb (what Istio's protomarshal calls):
//
//   - cluster, listener, route, endpoint: compact jsonpb per message joined
//     into an array, re-indented by json.MarshalIndent(.., "", "    ")
//     (istioctl's MessageSlice);
//   - secret, bootstrap: jsonpb with a four-space indent (ToJSONWithIndent);
//
// each followed by Println's newline. Usage:
//
//	istioctl-json DESCRIPTORS.bin CONFIG_DUMP.json CLUSTERS.json|- OUTDIR
//
// writes, for each view the dump has a section for (endpoint: when CLUSTERS.json
// is given), OUTDIR/{cluster,listener,route,endpoint,eds,secret,bootstrap}.json and
// the same as -o yaml prints them (.yaml, through sigs.k8s.io/yaml's JSONToYAML)
// (eds.json: the dump's load assignments in the MessageSlice shape; istioctl
// itself reads endpoints from /clusters). Run by regen.sh (GOPATH mode, with
// Debian's golang-google-protobuf-dev, golang-github-golang-protobuf-1-5-dev and
// golang-k8s-sigs-yaml-dev).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/golang/protobuf/jsonpb"
	protov1 "github.com/golang/protobuf/proto"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"sigs.k8s.io/yaml"
)

// types resolves message types (and Any type URLs) from the descriptor set
// alone, as dynamic messages.
type types struct{ files *protoregistry.Files }

func (t types) FindMessageByName(name protoreflect.FullName) (protoreflect.MessageType, error) {
	d, err := t.files.FindDescriptorByName(name)
	if err != nil {
		return nil, err
	}
	md, ok := d.(protoreflect.MessageDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a message", name)
	}
	return dynamicpb.NewMessageType(md), nil
}

func (t types) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	return t.FindMessageByName(protoreflect.FullName(url[strings.LastIndexByte(url, '/')+1:]))
}

func (t types) FindExtensionByName(protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return nil, protoregistry.NotFound
}

func (t types) FindExtensionByNumber(protoreflect.FullName, protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return nil, protoregistry.NotFound
}

// Resolve makes types jsonpb's AnyResolver.
func (t types) Resolve(url string) (protov1.Message, error) {
	mt, err := t.FindMessageByURL(url)
	if err != nil {
		return nil, err
	}
	return protov1.MessageV1(mt.New().Interface()), nil
}

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "istioctl-json: "+format+"\n", args...)
	os.Exit(1)
}

func (t types) parse(name string, data []byte) protoreflect.Message {
	mt, err := t.FindMessageByName(protoreflect.FullName(name))
	if err != nil {
		die("%s: %v", name, err)
	}
	m := mt.New()
	opts := protojson.UnmarshalOptions{Resolver: t, DiscardUnknown: true}
	if err := opts.Unmarshal(data, m.Interface()); err != nil {
		die("%s: %v", name, err)
	}
	return m
}

// unpack decodes an Any's bytes as `name`, whatever its type URL says (as
// istioctl sets the URL to the v3 type before unpacking).
func (t types) unpack(any protoreflect.Message, name string) protoreflect.Message {
	mt, err := t.FindMessageByName(protoreflect.FullName(name))
	if err != nil {
		die("%s: %v", name, err)
	}
	m := mt.New()
	if err := proto.Unmarshal(field(any, "value").Bytes(), m.Interface()); err != nil {
		die("%s: %v", name, err)
	}
	return m
}

func field(m protoreflect.Message, name string) protoreflect.Value {
	fd := m.Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil {
		die("%s has no field %s", m.Descriptor().FullName(), name)
	}
	return m.Get(fd)
}

// items: the messages at `path` (a list, then singular fields) in each
// element of the list `list` of `m`.
func items(m protoreflect.Message, list string, path ...string) []protoreflect.Message {
	var out []protoreflect.Message
	l := field(m, list).List()
	for i := 0; i < l.Len(); i++ {
		v := l.Get(i).Message()
		for _, p := range path {
			fd := v.Descriptor().Fields().ByName(protoreflect.Name(p))
			if !v.Has(fd) {
				v = nil
				break
			}
			v = v.Get(fd).Message()
		}
		if v != nil {
			out = append(out, v)
		}
	}
	return out
}

// section: the config dump's entry of message type `name`, unpacked; nil
// when the dump has none (its views are then not written).
func (t types) section(dump protoreflect.Message, name string) protoreflect.Message {
	l := field(dump, "configs").List()
	for i := 0; i < l.Len(); i++ {
		a := l.Get(i).Message()
		if strings.HasSuffix(field(a, "type_url").String(), "/"+name) {
			return t.unpack(a, name)
		}
	}
	return nil
}

func (t types) unpackAll(anys []protoreflect.Message, name string) []protoreflect.Message {
	out := make([]protoreflect.Message, len(anys))
	for i, a := range anys {
		out[i] = t.unpack(a, name)
	}
	return out
}

// messageSlice is istioctl's MessageSlice: compact jsonpb of each message in
// a JSON array.
type messageSlice struct {
	t    types
	msgs []protoreflect.Message
}

func (s messageSlice) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("[")
	m := jsonpb.Marshaler{AnyResolver: s.t}
	for i, msg := range s.msgs {
		if i > 0 {
			b.WriteString(",")
		}
		if err := m.Marshal(&b, protov1.MessageV1(msg.Interface())); err != nil {
			return nil, err
		}
	}
	b.WriteString("]")
	return b.Bytes(), nil
}

func (t types) sliceJSON(msgs []protoreflect.Message) string {
	out, err := json.MarshalIndent(messageSlice{t, msgs}, "", "    ")
	if err != nil {
		die("%v", err)
	}
	return string(out) + "\n"
}

func (t types) indentJSON(msg protoreflect.Message) string {
	m := jsonpb.Marshaler{Indent: "    ", AnyResolver: t}
	out, err := m.MarshalToString(protov1.MessageV1(msg.Interface()))
	if err != nil {
		die("%v", err)
	}
	return out + "\n"
}

// subsetKey splits Istio's cluster name DIRECTION|PORT|SUBSET|FQDN (or its
// DNS SRV form with "_." separators) as istioctl's safelyParseSubsetKey
// does: a name of three parts or fewer is all FQDN.
func subsetKey(name string) (dir, subset, fqdn string, port int) {
	if len(strings.Split(name, "|")) <= 3 {
		return "", "", name, 0
	}
	sep := "|"
	if strings.HasPrefix(name, "outbound_.") || strings.HasPrefix(name, "inbound_.") {
		sep = "_."
	}
	d, rest, ok := strings.Cut(name, sep)
	if !ok {
		return
	}
	dir = d
	p, rest, ok := strings.Cut(rest, sep)
	if !ok {
		return
	}
	port, _ = strconv.Atoi(p)
	s, rest, ok := strings.Cut(rest, sep)
	if !ok {
		return
	}
	subset = s
	if !strings.Contains(rest, sep) {
		fqdn = rest
	}
	return
}

// write stores the JSON text as NAME.json and, as -o yaml prints it
// (JSONToYAML of the same JSON, then Println), as NAME.yaml.
func write(dir, name, text string) {
	if err := os.WriteFile(filepath.Join(dir, name+".json"), []byte(text), 0o644); err != nil {
		die("%v", err)
	}
	y, err := yaml.JSONToYAML([]byte(strings.TrimSuffix(text, "\n")))
	if err != nil {
		// istioctl fails the same way (control characters, for one).
		fmt.Fprintf(os.Stderr, "istioctl-json: %s: no YAML: %v\n", name, err)
		return
	}
	if err := os.WriteFile(filepath.Join(dir, name+".yaml"), append(y, '\n'), 0o644); err != nil {
		die("%v", err)
	}
}

func read(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		die("%v", err)
	}
	return b
}

func main() {
	if len(os.Args) != 5 {
		die("usage: istioctl-json DESCRIPTORS.bin CONFIG_DUMP.json CLUSTERS.json OUTDIR")
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(read(os.Args[1]), &set); err != nil {
		die("%s: %v", os.Args[1], err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		die("%s: %v", os.Args[1], err)
	}
	t := types{files}
	dump := t.parse("envoy.admin.v3.ConfigDump", read(os.Args[2]))
	out := os.Args[4]

	if cds := t.section(dump, "envoy.admin.v3.ClustersConfigDump"); cds != nil {
		t.clusters(out, cds)
	}
	if lds := t.section(dump, "envoy.admin.v3.ListenersConfigDump"); lds != nil {
		listeners := append(t.unpackAll(items(lds, "dynamic_listeners", "active_state", "listener"), "envoy.config.listener.v3.Listener"),
			t.unpackAll(items(lds, "static_listeners", "listener"), "envoy.config.listener.v3.Listener")...)
		write(out, "listener", t.sliceJSON(listeners))
	}
	if rds := t.section(dump, "envoy.admin.v3.RoutesConfigDump"); rds != nil {
		t.routes(out, rds)
	}
	if eds := t.section(dump, "envoy.admin.v3.EndpointsConfigDump"); eds != nil {
		write(out, "eds", t.sliceJSON(append(
			t.unpackAll(items(eds, "dynamic_endpoint_configs", "endpoint_config"), "envoy.config.endpoint.v3.ClusterLoadAssignment"),
			t.unpackAll(items(eds, "static_endpoint_configs", "endpoint_config"), "envoy.config.endpoint.v3.ClusterLoadAssignment")...)))
	}
	if os.Args[3] != "-" {
		// istioctl's PrintEndpoints with no filter: the clusters with a host.
		var withHosts []protoreflect.Message
		for _, c := range items(t.parse("envoy.admin.v3.Clusters", read(os.Args[3])), "cluster_statuses") {
			if field(c, "host_statuses").List().Len() > 0 {
				withHosts = append(withHosts, c)
			}
		}
		write(out, "endpoint", t.sliceJSON(withHosts))
	}
	if s := t.section(dump, "envoy.admin.v3.SecretsConfigDump"); s != nil {
		write(out, "secret", t.indentJSON(s))
	}
	if b := t.section(dump, "envoy.admin.v3.BootstrapConfigDump"); b != nil {
		write(out, "bootstrap", t.indentJSON(b))
	}
}

// clusters writes the cluster view: dynamic then static, sorted as istioctl's
// retrieveSortedClusterSlice sorts them.
func (t types) clusters(out string, cds protoreflect.Message) {
	clusters := append(t.unpackAll(items(cds, "dynamic_active_clusters", "cluster"), "envoy.config.cluster.v3.Cluster"),
		t.unpackAll(items(cds, "static_clusters", "cluster"), "envoy.config.cluster.v3.Cluster")...)
	name := func(m protoreflect.Message) string { return field(m, "name").String() }
	sort.Slice(clusters, func(i, j int) bool {
		id, is, in, ip := subsetKey(name(clusters[i]))
		jd, js, jn, jp := subsetKey(name(clusters[j]))
		if in != jn {
			return in < jn
		}
		if is != js {
			return is < js
		}
		if ip != jp {
			return ip < jp
		}
		return id < jd
	})
	write(out, "cluster", t.sliceJSON(clusters))
}

// routes writes the route view: dynamic then static, sorted as istioctl's
// retrieveSortedRouteSlice sorts them (numeric names ascending; a
// non-numeric name is unordered against anything).
func (t types) routes(out string, rds protoreflect.Message) {
	name := func(m protoreflect.Message) string { return field(m, "name").String() }
	routes := append(t.unpackAll(items(rds, "dynamic_route_configs", "route_config"), "envoy.config.route.v3.RouteConfiguration"),
		t.unpackAll(items(rds, "static_route_configs", "route_config"), "envoy.config.route.v3.RouteConfiguration")...)
	sort.Slice(routes, func(i, j int) bool {
		a, err := strconv.Atoi(name(routes[i]))
		if err != nil {
			return false
		}
		b, err := strconv.Atoi(name(routes[j]))
		if err != nil {
			return false
		}
		return a < b
	})
	write(out, "route", t.sliceJSON(routes))
}
