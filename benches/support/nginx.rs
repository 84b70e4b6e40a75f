//! nginx in a testbed pod, serving `/1k` (1,024 bytes) on 8080 with keep-alive: the
//! upstream of the benchmarks' HTTP cases.

use std::path::Path;

use crate::common::cluster::Cluster;
use crate::common::testbed::Process;

/// Starts nginx in pod `pod` (files under `work`) and waits until it accepts on 8080.
pub fn start(c: &mut Cluster, pod: usize, work: &Path) {
    let www = work.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("1k"), vec![b'x'; 1024]).unwrap();
    let conf = work.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {pid};\nerror_log {err} warn;\nevents {{ worker_connections 20000; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n  server {{ listen 8080; root {www}; }}\n}}\n",
            pid = work.join("nginx.pid").display(),
            err = work.join("nginx-error.log").display(),
            tmp = work.display(),
            www = www.display()
        ),
    )
    .unwrap();
    let server = &mut c.pods[pod];
    let mut nginx = server.ns.command("nginx");
    nginx.arg("-c").arg(&conf);
    server
        .extra
        .push(Process::spawn(nginx, &work.join("nginx.out"), "nginx"));
    c.wait_for_port(pod, 8080, "nginx");
}
