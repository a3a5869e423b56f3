//! Normalize: the path the policy judges and the upstream gets (see [`crate::normalize`]),
//! with the query kept as it came.

use super::{Error, Exchange, Step};
use crate::normalize::normalize_path;

/// See the module docs.
#[derive(Clone, Copy)]
pub(crate) struct Normalize {
    merge_slashes: bool,
}

impl Normalize {
    /// `merge_slashes`: merge `//` in paths.
    pub(crate) fn new(merge_slashes: bool) -> Self {
        Normalize { merge_slashes }
    }
}

impl Step for Normalize {
    fn step(&self, ex: &mut Exchange) -> Result<(), Error> {
        let uri = ex.req.uri();
        let path = normalize_path(uri.path(), self.merge_slashes)?.into_owned();
        ex.rec.path = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        Ok(())
    }
}
