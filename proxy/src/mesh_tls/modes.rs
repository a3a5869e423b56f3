//! The inbound mTLS mode in force, per port: the `--mesh-tls-mode` setting until the
//! control plane sends the workload's PeerAuthentication result (`membrane.mesh.v1.MeshTls`,
//! resolved by membrane-xds), then that. Read once per accepted connection, so a change
//! applies to the next connection and never touches an established one.

use arc_swap::ArcSwap;
use membrane_api::mesh::{Effective, Mode};

use super::MeshMode;

/// The modes in force: the setting, and what the control plane said last.
#[derive(Debug)]
pub(crate) struct Modes {
    setting: MeshMode,
    from_control_plane: ArcSwap<Effective>,
}

impl From<Mode> for MeshMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Disable => MeshMode::Disable,
            Mode::Permissive => MeshMode::Permissive,
            Mode::Strict => MeshMode::Strict,
        }
    }
}

impl From<MeshMode> for Mode {
    fn from(m: MeshMode) -> Self {
        match m {
            MeshMode::Disable => Mode::Disable,
            MeshMode::Permissive => Mode::Permissive,
            MeshMode::Strict => Mode::Strict,
        }
    }
}

impl Modes {
    pub(crate) fn new(setting: MeshMode) -> Self {
        Modes {
            setting,
            from_control_plane: ArcSwap::from_pointee(Effective::default()),
        }
    }

    /// The mode for a connection to the workload's `port`: the control plane's port-level
    /// mode, else its workload mode, else the setting.
    pub(crate) fn for_port(&self, port: u16) -> MeshMode {
        self.from_control_plane
            .load()
            .mode_for(port, self.setting.into())
            .into()
    }

    /// The workload's mode (no port-level override).
    pub(crate) fn workload(&self) -> MeshMode {
        self.from_control_plane
            .load()
            .mode
            .map_or(self.setting, MeshMode::from)
    }

    /// Puts the control plane's result in force; true when it differs from the last.
    pub(crate) fn set(&self, e: Effective) -> bool {
        let old = self.from_control_plane.swap(std::sync::Arc::new(e));
        *old != **self.from_control_plane.load()
    }

    /// What the control plane said last (`Effective::default()`: nothing yet, or no
    /// PeerAuthentication applies).
    pub(crate) fn current(&self) -> std::sync::Arc<Effective> {
        self.from_control_plane.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_holds_until_the_control_plane_decides_per_port() {
        let m = Modes::new(MeshMode::Permissive);
        assert_eq!(m.for_port(80), MeshMode::Permissive);
        assert!(m.set(Effective {
            mode: Some(Mode::Strict),
            ports: [(9090, Mode::Disable)].into(),
            policies: vec![],
        }));
        assert_eq!(m.for_port(80), MeshMode::Strict);
        assert_eq!(m.for_port(9090), MeshMode::Disable);
        assert_eq!(m.workload(), MeshMode::Strict);
        // No PeerAuthentication any more: back to the setting.
        assert!(m.set(Effective::default()));
        assert!(!m.set(Effective::default()));
        assert_eq!(m.for_port(9090), MeshMode::Permissive);
    }
}
