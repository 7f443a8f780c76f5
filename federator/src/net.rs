//! Loopback ports for local servers: `federator dev`'s replicas, agents and demo services,
//! and the tests' (which start real processes on 127.0.0.1).

/// A free TCP port on 127.0.0.1 for a local server (`federator dev`, tests), never handed
/// out twice by this process.
///
/// Ports come from 10000–32767, below Linux's ephemeral range (32768–60999): a port from
/// the ephemeral range can be given to some outgoing connection while its server is down,
/// and the restarted server would then fail to bind it.
///
/// # Errors
/// No free port was found in 2,000 tries.
pub fn free_local_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher as _, Hasher as _};
    static HANDED_OUT: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<u16>>> =
        std::sync::OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    for _ in 0..2_000 {
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let port = 10_000 + u16::try_from(random % 22_768).unwrap_or(0);
        let Ok(mut taken) = handed_out.lock() else { break };
        if taken.contains(&port) || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        taken.insert(port);
        return Ok(port);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        "no free port on 127.0.0.1 in 10000-32767",
    ))
}
