//! Disk full: a keel member whose data dir is a small tmpfs. Writes fail with
//! a clear error once the log cannot grow, reads keep working, writing
//! resumes when space returns, and every acknowledged write survives a
//! kill -9. Needs root (to mount the tmpfs); skipped otherwise.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use keel_storage::proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use keel_tests::{Backend, Member, MemberOpts};

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Unmounts the tmpfs even when the test fails.
struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn put(c: &mut KvClient<tonic::transport::Channel>, k: &str) -> Result<i64, tonic::Status> {
    let r = c
        .put(PutRequest {
            key: Bytes::from(k.to_owned()),
            value: Bytes::from(vec![b'v'; 1024]),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().header.map_or(0, |h| h.revision))
}

async fn get(c: &mut KvClient<tonic::transport::Channel>, k: &str) -> Option<i64> {
    let r = c
        .range(RangeRequest {
            key: Bytes::from(k.to_owned()),
            ..Default::default()
        })
        .await
        .ok()?;
    r.into_inner().kvs.first().map(|kv| kv.mod_revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_writes_keeps_acked_data_and_recovers() {
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: disk_full needs root to mount a tmpfs");
        return;
    }
    let opts = MemberOpts::default().snapshot_count(1_000_000);
    let mut opts = opts;
    opts.extra_args = vec![
        "--experimental-wal-segment-size".into(),
        (256 * 1024).to_string(),
    ];
    let mut m = Member::prepare(Backend::Keel, opts).expect("prepare");
    let dir = m.data_dir();
    std::fs::create_dir_all(&dir).expect("mkdir");
    assert!(
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "size=4m",
                "tmpfs",
                &dir.to_string_lossy()
            ]
        ),
        "mount tmpfs"
    );
    let _mount = Mount(dir.clone());
    // Leave ~1.5 MiB for the log: the filler is what gets freed later.
    let filler = dir.join("filler");
    std::fs::write(&filler, vec![0u8; 2560 * 1024]).expect("filler");
    m.launch().expect("launch");
    m.wait_ready().expect("ready");
    let mut c = KvClient::connect(m.client_url()).await.expect("connect");
    let t0 = std::time::Instant::now();

    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..5000 {
        let k = format!("k{i:05}");
        match put(&mut c, &k).await {
            Ok(rev) => acked.push((k, rev)),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    println!("full after {} puts, {:?}", acked.len(), t0.elapsed());
    let e = refused.expect("the disk never filled up");
    assert!(
        e.message().contains("no space"),
        "unexpected error on a full disk: {e:?}"
    );
    assert!(acked.len() > 100, "only {} writes before full", acked.len());
    // Still serving: reads work, writes keep failing cleanly.
    assert_eq!(get(&mut c, &acked[0].0).await, Some(acked[0].1));
    assert!(put(&mut c, "still-full").await.is_err());
    println!("still full checked {:?}", t0.elapsed());
    assert!(
        m.is_running(),
        "member died on a full disk:\n{}",
        m.log_tail(30)
    );

    // Space returns: writing resumes.
    std::fs::remove_file(&filler).expect("rm filler");
    let mut resumed = None;
    for _ in 0..50 {
        if let Ok(rev) = put(&mut c, "after").await {
            resumed = Some(rev);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rev = resumed.expect("writes did not resume after space returned");
    println!("resumed {:?}", t0.elapsed());
    acked.push(("after".into(), rev));

    // Nothing acknowledged is lost across a crash.
    m.kill9();
    m.restart().expect("restart");
    let mut c = KvClient::connect(m.client_url()).await.expect("reconnect");
    println!("restarted {:?}", t0.elapsed());
    for (k, rev) in &acked {
        assert_eq!(get(&mut c, k).await, Some(*rev), "acked key {k} lost");
    }
}
