//! In-process tunnel throughput over loopback, side by side:
//! `direct` (client -> app), `relay` (client -> plain TCP relay -> app) and `hbone`
//! (client -> entry proxy -> HBONE mTLS h2 stream -> HBONE server -> app), i.e. the same
//! two proxy hops a meshed connection takes. Each iteration moves 16 MiB and waits for the
//! app to acknowledge it. `benches/run.sh` prints the ratios (and runs metrics_cost).

// criterion_group! defines a public function it gives no doc comment.
#![allow(missing_docs)]

mod support;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::runtime::Runtime;

use support::{connect, send_chunk, start_hbone_path, start_relay, start_sink, CHUNK};
use weft::identity::MeshCa;

fn throughput(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    MeshCa::init(ca_dir.path(), "cluster.local", false).unwrap();
    let data = vec![0x5au8; CHUNK];

    let (direct, relay, hbone) = runtime.block_on(async {
        let sink = start_sink().await;
        let relay = start_relay(sink).await;
        let hbone = start_hbone_path(sink, ca_dir.path().to_owned()).await;
        (sink, relay, hbone)
    });

    let mut group = c.benchmark_group("tunnel_throughput");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(6));
    let connect = |addr| runtime.block_on(connect(addr));
    for (name, addr) in [("direct", direct), ("relay", relay), ("hbone", hbone)] {
        let mut conn = connect(addr);
        group.bench_function(name, |b| {
            b.iter(|| runtime.block_on(send_chunk(&mut conn, &data)));
        });
    }
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
