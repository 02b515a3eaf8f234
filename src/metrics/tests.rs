//! The exposition text: well-formed (every sample's family announced once, before its
//! samples, names in Prometheus' alphabet, counters ending `_total`), the same figures as
//! STATS, and exact histogram buckets.

use super::*;

fn shared() -> NodeShared {
    let sh = NodeShared::new(7, 2, 1_000, 100);
    let c = &sh.counters;
    c[0].requests_by_op[op::GET as usize].fetch_add(5, Ordering::Relaxed);
    c[1].requests_by_op[op::GET as usize].fetch_add(2, Ordering::Relaxed);
    c[1].requests_by_op[0x20].fetch_add(9, Ordering::Relaxed);
    c[0].replies_by_status[Status::NotFound as usize].fetch_add(3, Ordering::Relaxed);
    c[0].connections.fetch_add(4, Ordering::Relaxed);
    c[0].latency_by_op[op::GET as usize].record_n(10, 4); // 10 µs
    c[1].latency_by_op[op::GET as usize].record_n(3_000, 1); // 3 ms
    c[0].latency_by_op[0].record_n(100, 1);
    c[0].storage.lock().unwrap().publish(|r| {
        r("storage_keys", 10);
        r("storage_recovery_ms", 1500);
        r("storage_disk_free_bytes_min", 900);
        r("some_new_figure", 3);
    });
    c[1].storage.lock().unwrap().publish(|r| {
        r("storage_keys", 5);
        r("storage_recovery_ms", 500);
        r("storage_disk_free_bytes_min", 400);
        r("some_new_figure", 4);
    });
    c[0].cluster.lock().unwrap().publish(|r| {
        r("coord_timeouts", 2);
        r("coord_unavailable", 1);
    });
    *c[0].members.lock().unwrap() = vec![
        crate::shard::stats::MemberFigure {
            id: 1,
            state: "up",
            leader: true,
        },
        crate::shard::stats::MemberFigure {
            id: 2,
            state: "failed",
            leader: false,
        },
    ];
    sh
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn figures_match_the_counters() {
    let text = render(&shared(), 11_000);
    assert_eq!(value(&text, "dkv_uptime_seconds"), Some(10.0), "{text}");
    assert_eq!(value(&text, "dkv_requests_total{op=\"get\"}"), Some(7.0));
    assert_eq!(
        value(&text, "dkv_requests_total{op=\"peer_0x20\"}"),
        Some(9.0)
    );
    assert_eq!(
        value(&text, "dkv_replies_total{status=\"not_found\"}"),
        Some(3.0)
    );
    assert_eq!(value(&text, "dkv_connections"), Some(4.0));
    assert_eq!(value(&text, "dkv_storage_keys"), Some(15.0));
    // Combined over the shards as STATS does: summed, min for `_min`.
    assert_eq!(value(&text, "dkv_storage_recovery_seconds"), Some(2.0));
    assert_eq!(value(&text, "dkv_storage_disk_free_bytes"), Some(400.0));
    assert_eq!(value(&text, "dkv_some_new_figure"), Some(7.0));
    assert_eq!(
        value(&text, "dkv_coordinator_outcomes_total{outcome=\"timeout\"}"),
        Some(2.0)
    );
    assert_eq!(
        value(&text, "dkv_cluster_node_state{node=\"2\",state=\"failed\"}"),
        Some(1.0)
    );
    assert_eq!(value(&text, "dkv_cluster_leader"), Some(1.0));
}

#[test]
fn histogram_buckets_are_exact_and_cumulative() {
    let text = render(&shared(), 11_000);
    let b = |le: &str| {
        value(
            &text,
            &format!("dkv_request_duration_seconds_bucket{{op=\"get\",le=\"{le}\"}}"),
        )
    };
    assert_eq!(b("0.000016"), Some(4.0), "{text}");
    assert_eq!(b("0.002048"), Some(4.0));
    assert_eq!(b("0.004096"), Some(5.0));
    assert_eq!(b("+Inf"), Some(5.0));
    assert_eq!(
        value(&text, "dkv_request_duration_seconds_count{op=\"get\"}"),
        Some(5.0)
    );
    assert_eq!(
        value(&text, "dkv_request_duration_seconds_sum{op=\"get\"}"),
        Some(0.00304)
    );
    assert_eq!(
        value(&text, "dkv_request_duration_seconds_count{op=\"peer\"}"),
        Some(1.0)
    );
    // Opcodes without requests have no series.
    assert!(!text.contains("op=\"put\",le"), "{text}");
}

#[test]
fn exposition_is_well_formed() {
    let text = render(&shared(), 11_000);
    let mut announced: Vec<(String, String)> = Vec::new();
    let mut last_family = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                !announced.iter().any(|(n, _)| n == name),
                "{name} announced twice"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} without _total");
            } else {
                assert!(!name.ends_with("_total"), "{kind} {name} ends in _total");
            }
            announced.push((name.to_string(), kind.to_string()));
            last_family = name.to_string();
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        assert!(
            !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| *f == last_family))
            .unwrap_or(&name);
        assert_eq!(family, last_family, "sample {line} outside its family");
        let v = line.rsplit(' ').next().expect("a value");
        assert!(v.parse::<f64>().is_ok(), "{line}");
    }
    assert!(announced
        .iter()
        .any(|(n, k)| n == "dkv_request_duration_seconds" && k == "histogram"));
}
