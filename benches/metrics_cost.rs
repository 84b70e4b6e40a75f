//! What metrics cost on the tunnel: the full HBONE path with metrics off (no recorder:
//! counters are no-ops) and on (Prometheus recorder installed, every byte counted on both
//! proxies), measured interleaved (off, on, off, on, ...) on two connections opened before
//! and after the recorder was installed, so machine noise hits both arms alike. Prints the
//! median throughput of each arm and their ratio. Run: `cargo bench --bench metrics_cost`.

mod support;

use std::time::{Duration, Instant};

use support::{connect, send_chunk, start_hbone_path, start_sink, CHUNK};
use weft::identity::MeshCa;

const ROUNDS: usize = 15;
/// Chunks per measurement: 8 x 16 MiB = 128 MiB.
const CHUNKS_PER_ROUND: usize = 8;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    MeshCa::init(ca_dir.path(), "cluster.local", false).unwrap();
    let data = vec![0x5au8; CHUNK];
    runtime.block_on(async {
        let sink = start_sink().await;
        let path = start_hbone_path(sink, ca_dir.path().to_owned()).await;
        let mut off = connect(path).await;
        // Warm the "off" path before the recorder exists (its labels resolve to no-ops).
        send_chunk(&mut off, &data).await;
        let handle = weft::telemetry::install().unwrap();
        let mut on = connect(path).await;
        send_chunk(&mut on, &data).await;

        let mut gbit_off = Vec::new();
        let mut gbit_on = Vec::new();
        for _ in 0..ROUNDS {
            for (conn, out) in [(&mut off, &mut gbit_off), (&mut on, &mut gbit_on)] {
                let start = Instant::now();
                for _ in 0..CHUNKS_PER_ROUND {
                    send_chunk(conn, &data).await;
                }
                let seconds = start.elapsed().max(Duration::from_nanos(1)).as_secs_f64();
                out.push((CHUNK * CHUNKS_PER_ROUND * 8) as f64 / seconds / 1e9);
            }
        }
        assert!(handle.render().contains("istio_tcp_received_bytes_total"));
        let (m_off, m_on) = (median(gbit_off.clone()), median(gbit_on.clone()));
        println!(
            "metrics cost on the HBONE path ({ROUNDS} interleaved rounds of {} MiB each)",
            CHUNK * CHUNKS_PER_ROUND / (1 << 20)
        );
        println!(
            "  metrics off  median {m_off:6.2} Gbit/s  (min {:.2}, max {:.2})",
            gbit_off.iter().cloned().fold(f64::MAX, f64::min),
            gbit_off.iter().cloned().fold(0.0, f64::max)
        );
        println!(
            "  metrics on   median {m_on:6.2} Gbit/s  (min {:.2}, max {:.2})",
            gbit_on.iter().cloned().fold(f64::MAX, f64::min),
            gbit_on.iter().cloned().fold(0.0, f64::max)
        );
        println!("  on / off = {:.3}", m_on / m_off);
    });
}
