//! The physical floor under any store on this machine: the disk's
//! write + fdatasync latency and the loopback TCP round trip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::stats::{new_histogram, record};

/// `total` rounds of a 4 KiB append + fdatasync to a file in `dir`.
pub fn fsync(dir: &Path, total: u64) -> Result<(Histogram<u64>, Duration)> {
    let path = dir.join(".keel-bench-fsync");
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let block = vec![0u8; 4096];
    let mut h = new_histogram();
    let start = Instant::now();
    for _ in 0..total {
        let t0 = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        record(&mut h, t0.elapsed());
    }
    let elapsed = start.elapsed();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok((h, elapsed))
}

/// `total` ping-pongs of `size` bytes over a loopback TCP connection
/// (`TCP_NODELAY`), echoed by a thread of this process.
pub fn rtt(total: u64, size: usize) -> Result<(Histogram<u64>, Duration)> {
    let size = size.max(1);
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; size];
        loop {
            if s.read_exact(&mut buf).is_err() {
                return Ok(()); // the client closed
            }
            s.write_all(&buf)?;
        }
    });
    let mut c = TcpStream::connect(addr).context("connecting to the echo thread")?;
    c.set_nodelay(true)?;
    let msg = vec![7u8; size];
    let mut buf = vec![0u8; size];
    let mut h = new_histogram();
    let start = Instant::now();
    for _ in 0..total {
        let t0 = Instant::now();
        c.write_all(&msg)?;
        c.read_exact(&mut buf)?;
        record(&mut h, t0.elapsed());
    }
    let elapsed = start.elapsed();
    drop(c);
    let _ = echo.join();
    Ok((h, elapsed))
}
