#![no_main]
//! Feeds weft-cni what a container runtime controls: the input is `KEY=VALUE` lines (the
//! CNI_* environment; a value that is not UTF-8 reads as unset, like `std::env::var`), a
//! blank line, then the stdin bytes. Runs `Environment::read`, `NetConf::parse`,
//! `valid_container_ids`, `ips_from_result`, and builds the daemon request as `main.rs`
//! does. Asserts: errors carry the right code and their JSON is valid; an accepted
//! environment honours the spec's required variables and carries a container id the
//! daemon's `check_container_id` accepts; an accepted NetConf has a supported
//! version and absolute paths and re-parses equal after serialization; every request the
//! plugin can build is one JSON line that the daemon parses back equal.

use std::collections::BTreeMap;
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weft_cni::protocol::{check_container_id, PodAttachment, Request};
use weft_cni::spec::{
    ips_from_result, CniError, Code, Command, Environment, NetConf, LATEST_VERSION,
    SUPPORTED_VERSIONS,
};

/// Splits the input into the environment (up to the first blank line) and stdin.
fn split(data: &[u8]) -> (BTreeMap<Vec<u8>, Vec<u8>>, &[u8]) {
    let (env_part, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (&[][..], data),
    };
    let mut env = BTreeMap::new();
    for line in env_part.split(|&b| b == b'\n') {
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            env.insert(line[..eq].to_vec(), line[eq + 1..].to_vec());
        }
    }
    (env, stdin)
}

fn check_error_json(error: &CniError, version: &str) {
    let json: Value = serde_json::from_str(&error.to_json(version))
        .unwrap_or_else(|e| panic!("error JSON does not parse: {e}: {error:?}"));
    assert_eq!(json["code"].as_u64(), Some(error.code as u64));
    assert_eq!(json["msg"].as_str(), Some(error.msg.as_str()));
    assert_eq!(json["details"].as_str(), Some(error.details.as_str()));
    assert_eq!(json["cniVersion"].as_str(), Some(version));
}

/// The daemon reads one line and `serde_json::from_str::<Request>(line.trim())`.
fn check_request_line(request: &Request) {
    let line = serde_json::to_string(request).expect("a request always serializes");
    assert!(!line.contains('\n'), "request is not one line: {line:?}");
    let back: Request = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("daemon cannot parse {line:?}: {e}"));
    assert_eq!(&back, request);
}

fuzz_target!(|data: &[u8]| {
    let (vars, stdin) = split(data);
    let get = |key: &str| {
        vars.get(key.as_bytes())
            .and_then(|v| String::from_utf8(v.clone()).ok())
    };

    let env = Environment::read(get);
    match &env {
        Ok(env) => {
            let command = get("CNI_COMMAND").unwrap();
            let expected = match command.as_str() {
                "ADD" => Command::Add,
                "DEL" => Command::Del,
                "CHECK" => Command::Check,
                "VERSION" => Command::Version,
                "STATUS" => Command::Status,
                "GC" => Command::Gc,
                other => panic!("accepted CNI_COMMAND {other:?}"),
            };
            assert_eq!(env.command, expected);
            assert_eq!(env.container_id, get("CNI_CONTAINERID").filter(|v| !v.is_empty()));
            assert_eq!(env.netns, get("CNI_NETNS").filter(|v| !v.is_empty()));
            if matches!(env.command, Command::Add | Command::Check | Command::Del) {
                assert!(env.container_id.is_some());
            }
            if matches!(env.command, Command::Add | Command::Check) {
                assert!(env.netns.is_some());
            }
            if let Some(id) = &env.container_id {
                assert!(
                    check_container_id(id).is_ok(),
                    "container id {id:?} accepted by the plugin, refused by the daemon's check"
                );
            }
            let raw_args = get("CNI_ARGS").unwrap_or_default();
            for (k, v) in &env.args {
                assert!(
                    raw_args.split(';').any(|pair| pair == format!("{k}={v}")),
                    "arg {k:?}={v:?} is not in CNI_ARGS {raw_args:?}"
                );
            }
            if let Some((namespace, name, uid)) = env.pod() {
                assert_eq!(Some(&namespace), env.args.get("K8S_POD_NAMESPACE"));
                assert_eq!(Some(&name), env.args.get("K8S_POD_NAME"));
                assert!(!uid.is_empty() || env.args.get("K8S_POD_UID").is_some());
            }
        }
        Err(error) => {
            assert_eq!(error.code, Code::InvalidEnvironment);
            check_error_json(error, LATEST_VERSION);
        }
    }

    let conf = NetConf::parse(stdin);
    match &conf {
        Ok(conf) => {
            assert!(SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
            assert!(conf.socket_path.starts_with('/'), "{:?}", conf.socket_path);
            assert!(conf.run_dir.starts_with('/'), "{:?}", conf.run_dir);
            let text = serde_json::to_vec(conf).expect("NetConf serializes");
            let again = NetConf::parse(&text)
                .unwrap_or_else(|e| panic!("re-parsing {:?} failed: {e:?}", String::from_utf8_lossy(&text)));
            assert_eq!(&again, conf);
            match conf.valid_container_ids() {
                Ok(None) => assert!(conf.valid_attachments.is_none()),
                Ok(Some(ids)) => {
                    let listed = conf.valid_attachments.as_ref().map(Vec::len);
                    assert_eq!(Some(ids.len()), listed);
                    check_request_line(&Request::Gc {
                        valid_container_ids: ids,
                    });
                }
                Err(error) => {
                    assert_eq!(error.code, Code::DecodeFailure);
                    check_error_json(&error, &conf.cni_version);
                }
            }
            if let Some(prev) = &conf.prev_result {
                match ips_from_result(prev) {
                    Ok(ips) => {
                        let listed = prev.get("ips").and_then(Value::as_array).map_or(0, Vec::len);
                        assert_eq!(ips.len(), listed);
                        assert!(!ips.is_empty(), "a prevResult without IPs was accepted");
                    }
                    Err(error) => {
                        assert!(matches!(
                            error.code,
                            Code::DecodeFailure | Code::InvalidNetworkConfig
                        ));
                        check_error_json(&error, &conf.cni_version);
                    }
                }
            }
        }
        Err(error) => {
            assert!(matches!(
                error.code,
                Code::DecodeFailure | Code::IncompatibleVersion | Code::InvalidNetworkConfig
            ));
            check_error_json(error, LATEST_VERSION);
        }
    }

    // The rest of main.rs's ADD/CHECK/DEL path, without the daemon and the filesystem.
    if let (Ok(env), Ok(conf)) = (&env, &conf) {
        match env.command {
            Command::Add | Command::Check => {
                let Some(prev) = conf.prev_result.as_ref() else {
                    assert!(conf.require_prev_result().is_err());
                    return;
                };
                let mut result = prev.clone();
                if let Some(map) = result.as_object_mut() {
                    map.insert("cniVersion".into(), conf.cni_version.clone().into());
                }
                let printed: Value = serde_json::from_str(&result.to_string())
                    .expect("the ADD output is JSON");
                assert_eq!(printed, result);
                if let (Some((namespace, name, uid)), Ok(ips)) = (env.pod(), ips_from_result(prev)) {
                    let ips: Vec<IpAddr> = ips;
                    let attachment = PodAttachment {
                        container_id: env.container_id.clone().unwrap_or_default(),
                        netns: env.netns.clone().unwrap_or_default(),
                        namespace,
                        name,
                        uid,
                        ips,
                    };
                    check_request_line(&if env.command == Command::Add {
                        Request::Add(attachment)
                    } else {
                        Request::Check(attachment)
                    });
                }
            }
            Command::Del => check_request_line(&Request::Del {
                container_id: env.container_id.clone().unwrap_or_default(),
            }),
            Command::Status => check_request_line(&Request::Status),
            Command::Gc | Command::Version => {}
        }
    }
});
