//! Free 127.0.0.1 ports: bind port 0, read the port the kernel picked, release it.
//!
//! A port handed out once is never handed out again by this process, so tests
//! running in parallel threads never collide with each other; a collision with
//! some other process is handled by [`crate::Member::start`], which retries on
//! "address already in use".

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static SET: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A port on 127.0.0.1 that was free a moment ago and that this process has
/// never handed out before.
pub fn free_port() -> u16 {
    let mut set = handed_out().lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("bind 127.0.0.1:0 to find a free port");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if set.insert(port) {
            return port;
        }
    }
    panic!("could not find a free port after 1000 attempts");
}
