//! Fault suite: the S3 server (moto, its own instance on its own port)
//! killed in the middle of background uploads and started again. moto keeps
//! objects in memory, so the restarted server has lost everything: harsher
//! than a real outage. The store keeps working locally, and `sync_tier`
//! converges the bucket (re-uploading what vanished from the local copies):
//! every snapshot then restores byte-identical on an empty directory.
//!
//! Needs `python3` with `moto[server]` (scripts/s3-server installs it).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cowstore::{Durability, Store, StoreConfig, TierConfig};
use futures::executor::block_on;

const PORT: u16 = 19100;
const BUCKET: &str = "restart";

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A moto server on `PORT` with an empty `BUCKET`; killed on drop.
struct Moto(Child);

impl Moto {
    fn start() -> Moto {
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &PORT.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server: install moto[server] (scripts/s3-server does)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", PORT)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let made = Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:{PORT}', region_name='us-east-1', \
                     aws_access_key_id='k', aws_secret_access_key='s').create_bucket(Bucket='{BUCKET}')"
                ),
            ])
            .status()
            .expect("python3");
        assert!(made.success(), "could not create the test bucket on moto");
        Moto(child)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config() -> StoreConfig {
    let mut tier = TierConfig::new(format!("s3://{BUCKET}/store"));
    tier.durability = Durability::Local;
    tier.upload_concurrency = 2;
    tier.gc_grace_s = 0;
    tier.s3_options = vec![
        ("aws_endpoint".into(), format!("http://127.0.0.1:{PORT}")),
        ("aws_allow_http".into(), "true".into()),
        ("aws_region".into(), "us-east-1".into()),
        ("aws_access_key_id".into(), "k".into()),
        ("aws_secret_access_key".into(), "s".into()),
    ];
    StoreConfig {
        segment_bytes: 1 << 20,
        tier: Some(tier),
        ..StoreConfig::default()
    }
}

#[test]
fn server_killed_and_restarted_mid_upload() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path().join("s"), config()).unwrap();
    let v = store.create_volume("v", 64 << 20).unwrap();
    for i in 0..8u64 {
        block_on(v.write(i << 20, &pattern(i, 1 << 20))).unwrap();
        store.create_snapshot("v", &format!("v@{i}")).unwrap();
    }
    // Kill the server with uploads and publishes in flight; local I/O and
    // snapshots go on while it is down.
    drop(moto);
    for i in 8..12u64 {
        block_on(v.write(i << 20, &pattern(i, 1 << 20))).unwrap();
        store.create_snapshot("v", &format!("v@{i}")).unwrap();
    }
    block_on(v.flush()).unwrap();
    assert_eq!(block_on(v.read(0, 12 << 20)).unwrap().len(), 12 << 20);
    // Back, empty. The store converges.
    let _moto = Moto::start();
    store.sync_tier().unwrap();
    let published = store.remote_snapshots().unwrap();
    assert_eq!(
        published.len(),
        12,
        "{:?}",
        published.iter().map(|m| &m.name).collect::<Vec<_>>()
    );
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = Store::create(fresh_dir.path().join("s"), config()).unwrap();
    for i in 0..12u64 {
        let s = fresh.restore_snapshot(&format!("v@{i}")).unwrap();
        for j in 0..=i {
            assert!(
                block_on(s.read(j << 20, 1 << 20)).unwrap() == pattern(j, 1 << 20),
                "v@{i} MiB {j} after the server restart"
            );
        }
    }
    // Converged, and nothing leaks: with everything deleted, object GC
    // leaves no segment or checkpoint behind.
    drop((fresh, v));
    for i in 0..12u64 {
        store.delete_snapshot(&format!("v@{i}")).unwrap();
    }
    store.delete_volume("v").unwrap();
    store.gc().unwrap();
    store.gc_objects().unwrap();
    let again = store.gc_objects().unwrap();
    assert_eq!(again.objects_examined, 0, "objects leaked: {again:?}");
}
