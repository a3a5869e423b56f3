//! The socket load balancer's maps: service frontends and their backend sets.

use super::*;

const MAP_SERVICE: &str = "mb_service";
const MAP_BACKEND: &str = "mb_backend";
type ServiceMap = HashMap<MapData, MbAddrPort, MbSvcValue>;
type BackendMap = HashMap<MapData, MbBackendKey, MbAddrPort>;

impl Datapath {
    /// The service frontends and the backend sets, as typed maps.
    fn service_maps(&self) -> Result<(ServiceMap, BackendMap)> {
        let svcs = HashMap::try_from(Map::HashMap(self.map(MAP_SERVICE)?)).map_err(|source| {
            Error::Map {
                name: MAP_SERVICE,
                source,
            }
        })?;
        let bes = HashMap::try_from(Map::HashMap(self.map(MAP_BACKEND)?)).map_err(|source| {
            Error::Map {
                name: MAP_BACKEND,
                source,
            }
        })?;
        Ok((svcs, bes))
    }

    /// Route new connects to `frontend` (a service's address and port) to
    /// one of `backends`, chosen per connection (socket-level load
    /// balancing in connect4/connect6). The new backend set is written in
    /// full before the service points at it, and the old one deleted after,
    /// so a connect sees one set or the other. No backends: connects to the
    /// service are refused.
    pub fn set_service(&self, frontend: SocketAddr, backends: &[SocketAddr]) -> Result<()> {
        let count = u16::try_from(backends.len()).map_err(|_| {
            Error::Invalid(format!(
                "service {frontend}: {} backends, at most 65535",
                backends.len()
            ))
        })?;
        let (mut svcs, mut bes) = self.service_maps()?;
        let key = addr_port(frontend);
        let old = svcs.get(&key, 0).ok();
        // A set number no service uses: one past the highest in use.
        let set = svcs
            .iter()
            .filter_map(|e| e.ok())
            .map(|(_, v)| v.backend_set)
            .max()
            .map_or(1, |m| m.wrapping_add(1).max(1));
        for (slot, b) in (0u32..).zip(backends) {
            let k = MbBackendKey {
                backend_set: set,
                slot,
            };
            bes.insert(k, addr_port(*b), 0)
                .map_err(|source| Error::Map {
                    name: MAP_BACKEND,
                    source,
                })?;
        }
        let value = MbSvcValue {
            backend_set: set,
            count,
            pad: 0,
        };
        svcs.insert(key, value, 0).map_err(|source| Error::Map {
            name: MAP_SERVICE,
            source,
        })?;
        if let Some(old) = old {
            for slot in 0..u32::from(old.count) {
                let _ = bes.remove(&MbBackendKey {
                    backend_set: old.backend_set,
                    slot,
                });
            }
        }
        Ok(())
    }

    /// Stop balancing `frontend`: connects to it go where they are addressed.
    /// Not a service is not an error.
    pub fn delete_service(&self, frontend: SocketAddr) -> Result<()> {
        let (mut svcs, mut bes) = self.service_maps()?;
        let key = addr_port(frontend);
        let Ok(old) = svcs.get(&key, 0) else {
            return Ok(());
        };
        svcs.remove(&key).map_err(|source| Error::Map {
            name: MAP_SERVICE,
            source,
        })?;
        for slot in 0..u32::from(old.count) {
            let _ = bes.remove(&MbBackendKey {
                backend_set: old.backend_set,
                slot,
            });
        }
        Ok(())
    }

    /// Every service frontend with its backends, sorted by frontend.
    pub fn services(&self) -> Result<Vec<(SocketAddr, Vec<SocketAddr>)>> {
        let (svcs, bes) = self.service_maps()?;
        let mut out = Vec::new();
        for (k, v) in svcs.iter().filter_map(|e| e.ok()) {
            let backends = (0..u32::from(v.count))
                .filter_map(|slot| {
                    bes.get(
                        &MbBackendKey {
                            backend_set: v.backend_set,
                            slot,
                        },
                        0,
                    )
                    .ok()
                })
                .map(socket_addr)
                .collect();
            out.push((socket_addr(k), backends));
        }
        out.sort();
        Ok(out)
    }
}
