use super::*;

const ZTUNNEL: &str = r#"# HELP ambit_tcp_connections_opened TCP connections opened through the mesh.
# TYPE ambit_tcp_connections_opened counter
ambit_tcp_connections_opened_total{reporter="source",source_workload="a",destination_service="b.default.svc",connection_security_policy="mutual_tls"} 20
ambit_tcp_connections_opened_total{reporter="destination",source_workload="a",destination_service="b.default.svc",connection_security_policy="mutual_tls"} 20
ambit_captured_pods 3
weird{msg="say \"hi\"\\n",x="a,b}"} 1.5e3 1700000000
# EOF
ignored_after_eof 1
"#;

#[test]
fn parses_labels_escapes_timestamps_and_stops_at_eof() {
    let s = parse(ZTUNNEL).unwrap();
    assert_eq!(s.len(), 4);
    assert_eq!(s[0].name, "ambit_tcp_connections_opened_total");
    assert_eq!(s[0].labels["reporter"], "source");
    assert_eq!(s[0].value, 20.0);
    assert_eq!(s[2].labels.len(), 0);
    assert_eq!(s[3].labels["msg"], "say \"hi\"\\n");
    assert_eq!(s[3].labels["x"], "a,b}");
    assert_eq!(s[3].value, 1500.0);
}

#[test]
fn reports_the_bad_line() {
    let err = parse("ok 1\nbroken{a=\"x\" 2\n").unwrap_err();
    assert_eq!(err.line, 2);
    let err = parse("nan_value abc\n").unwrap_err();
    assert!(err.message.contains("not a number"), "{err}");
}

#[test]
fn sums_group_by_labels() {
    let s = parse(ZTUNNEL).unwrap();
    let by = sum_by(&s, "ambit_tcp_connections_opened_total", &["reporter"]);
    assert_eq!(by[&vec!["source".to_string()]], 20.0);
    assert_eq!(by.len(), 2);
}

#[test]
fn quantile_interpolates_like_promql() {
    // 100 observations: 10 in (0,5], 40 in (5,10], 50 in (10,50].
    let b = vec![
        (5.0, 10.0),
        (10.0, 50.0),
        (50.0, 100.0),
        (f64::INFINITY, 100.0),
    ];
    // rank 99 is 49/50 of the way through (10,50] -> 10 + 40*0.98 = 49.2
    assert!((histogram_quantile(0.99, &b).unwrap() - 49.2).abs() < 1e-9);
    // median: rank 50 is the top of (5,10]
    assert!((histogram_quantile(0.5, &b).unwrap() - 10.0).abs() < 1e-9);
    // rank 5 in the first bucket, lower bound 0
    assert!((histogram_quantile(0.05, &b).unwrap() - 2.5).abs() < 1e-9);
    // Everything above the last finite bound: answer that bound.
    let inf = vec![(5.0, 0.0), (10.0, 0.0), (f64::INFINITY, 7.0)];
    assert_eq!(histogram_quantile(0.99, &inf), Some(10.0));
    assert_eq!(
        histogram_quantile(0.99, &[(5.0, 0.0), (f64::INFINITY, 0.0)]),
        None
    );
}

#[test]
fn waypoint_fixture_rate_success_and_p99_over_two_scrapes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let a =
        parse(&std::fs::read_to_string(format!("{dir}/waypoint-metrics-1.txt")).unwrap()).unwrap();
    let b =
        parse(&std::fs::read_to_string(format!("{dir}/waypoint-metrics-2.txt")).unwrap()).unwrap();
    let by = ["destination_service", "response_code"];
    let ra = sum_by(&a, "ambit_requests_total", &by);
    let rb = sum_by(&b, "ambit_requests_total", &by);
    let key = |c: &str| {
        vec![
            "reviews.bookinfo.svc.cluster.local".to_string(),
            c.to_string(),
        ]
    };
    assert_eq!(rb[&key("200")] - ra[&key("200")], 190.0);
    assert_eq!(rb[&key("503")] - ra[&key("503")], 10.0);
    let ba = buckets_by(
        &a,
        "ambit_request_duration_milliseconds",
        &["destination_service"],
    );
    let bb = buckets_by(
        &b,
        "ambit_request_duration_milliseconds",
        &["destination_service"],
    );
    let k = vec!["reviews.bookinfo.svc.cluster.local".to_string()];
    let d = bucket_delta(ba.get(&k), &bb[&k]);
    assert_eq!(
        d,
        vec![
            (5.0, 0.0),
            (10.0, 0.0),
            (50.0, 100.0),
            (f64::INFINITY, 200.0)
        ]
    );
    // Over the interval, half the requests took more than 50 ms: p99 is the last finite bound.
    assert_eq!(histogram_quantile(0.99, &d), Some(50.0));
    // p25: rank 50 of 200 in (10,50] holding 100 -> 10 + 40*0.5
    assert!((histogram_quantile(0.25, &d).unwrap() - 30.0).abs() < 1e-9);
}

#[test]
fn counter_reset_counts_from_zero() {
    let before = vec![(1.0, 50.0), (f64::INFINITY, 60.0)];
    assert_eq!(
        bucket_delta(Some(&before), &[(1.0, 5.0), (f64::INFINITY, 6.0)]),
        vec![(1.0, 5.0), (f64::INFINITY, 6.0)]
    );
}
