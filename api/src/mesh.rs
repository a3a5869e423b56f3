//! The sidecar's mesh resource (`membrane.mesh.v1.MeshTls`, `proto/membrane/mesh/v1/mesh.proto`):
//! the effective PeerAuthentication mTLS mode of one workload, per port, as membrane-xds
//! resolves it and the sidecar's inbound capture applies it. [`Effective`] is the checked
//! form both sides agree on: the control plane builds the message from it, the sidecar
//! accepts a message only through it (anything else is NACKed with the reason).

use std::collections::BTreeMap;

/// Generated mesh types (package `membrane.mesh.v1`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("membrane.mesh.v1");
}

/// PeerAuthentication's mTLS modes (without UNSET, which is inheritance, never a mode in
/// force).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Plaintext only.
    Disable,
    /// Mutual TLS or plaintext.
    Permissive,
    /// Mutual TLS only.
    Strict,
}

impl Mode {
    /// Istio's spelling (`STRICT`, `PERMISSIVE`, `DISABLE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Disable => "DISABLE",
            Mode::Permissive => "PERMISSIVE",
            Mode::Strict => "STRICT",
        }
    }

    fn to_proto(self) -> proto::MtlsMode {
        match self {
            Mode::Disable => proto::MtlsMode::Disable,
            Mode::Permissive => proto::MtlsMode::Permissive,
            Mode::Strict => proto::MtlsMode::Strict,
        }
    }
}

/// Why a `MeshTls` message cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MeshError {
    /// A mode value outside the enum.
    #[error("{field}: unknown mode {value}")]
    UnknownMode {
        /// `mode` or `port_modes[PORT]`.
        field: String,
        /// The number sent.
        value: i32,
    },
    /// A port-level mode of UNSET (the control plane resolves inheritance).
    #[error("port_modes[{0}]: UNSET (a port-level mode must be resolved)")]
    UnsetPort(u32),
    /// A port outside 1-65535.
    #[error("port_modes[{0}]: port must be in 1-65535")]
    Port(u32),
}

/// The effective mode of one workload: `None` when no PeerAuthentication applies (the
/// sidecar's own setting stays), and per-port overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effective {
    /// The workload's mode.
    pub mode: Option<Mode>,
    /// Port-level modes.
    pub ports: BTreeMap<u16, Mode>,
    /// The deciding PeerAuthentication objects (`NAMESPACE/NAME`).
    pub policies: Vec<String>,
}

fn mode_of(field: impl Fn() -> String, v: i32) -> Result<Option<Mode>, MeshError> {
    match proto::MtlsMode::try_from(v) {
        Ok(proto::MtlsMode::Unset) => Ok(None),
        Ok(proto::MtlsMode::Disable) => Ok(Some(Mode::Disable)),
        Ok(proto::MtlsMode::Permissive) => Ok(Some(Mode::Permissive)),
        Ok(proto::MtlsMode::Strict) => Ok(Some(Mode::Strict)),
        Err(_) => Err(MeshError::UnknownMode {
            field: field(),
            value: v,
        }),
    }
}

impl Effective {
    /// The message for this effective mode.
    pub fn to_proto(&self) -> proto::MeshTls {
        proto::MeshTls {
            mode: self
                .mode
                .map_or(proto::MtlsMode::Unset, Mode::to_proto)
                .into(),
            port_modes: self
                .ports
                .iter()
                .map(|(p, m)| (u32::from(*p), m.to_proto().into()))
                .collect(),
            policies: self.policies.clone(),
        }
    }

    /// Checks a received message.
    pub fn from_proto(m: &proto::MeshTls) -> Result<Self, MeshError> {
        let mode = mode_of(|| "mode".into(), m.mode)?;
        let mut ports = BTreeMap::new();
        for (&port, &v) in &m.port_modes {
            let p = u16::try_from(port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or(MeshError::Port(port))?;
            let mode =
                mode_of(|| format!("port_modes[{port}]"), v)?.ok_or(MeshError::UnsetPort(port))?;
            ports.insert(p, mode);
        }
        Ok(Effective {
            mode,
            ports,
            policies: m.policies.clone(),
        })
    }

    /// The mode for a connection to `port`, `fallback` when no PeerAuthentication decides.
    pub fn mode_for(&self, port: u16, fallback: Mode) -> Mode {
        self.ports
            .get(&port)
            .copied()
            .or(self.mode)
            .unwrap_or(fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_and_bad_ones_are_named() {
        let e = Effective {
            mode: Some(Mode::Strict),
            ports: [(8080, Mode::Disable)].into(),
            policies: vec!["default/a".into()],
        };
        assert_eq!(Effective::from_proto(&e.to_proto()).unwrap(), e);
        assert_eq!(e.mode_for(8080, Mode::Permissive), Mode::Disable);
        assert_eq!(e.mode_for(80, Mode::Permissive), Mode::Strict);
        assert_eq!(
            Effective::default().mode_for(80, Mode::Permissive),
            Mode::Permissive
        );
        let mut m = e.to_proto();
        m.port_modes.insert(70000, proto::MtlsMode::Strict.into());
        assert_eq!(Effective::from_proto(&m), Err(MeshError::Port(70000)));
        let mut m = e.to_proto();
        m.port_modes.insert(9000, proto::MtlsMode::Unset.into());
        assert_eq!(Effective::from_proto(&m), Err(MeshError::UnsetPort(9000)));
        let mut m = e.to_proto();
        m.mode = 9;
        assert_eq!(
            Effective::from_proto(&m).unwrap_err().to_string(),
            "mode: unknown mode 9"
        );
    }
}
