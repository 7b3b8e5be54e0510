//! Watches: event order, resuming from a resourceVersion, 410 after compaction, bookmarks,
//! selector transitions, kube's watcher (list+watch and streaming lists), many concurrent
//! watchers and writers, and closing a watcher that falls too far behind.

mod common;

use ambit_apisim::ApiServerConfig;
use common::{client_for, from, start, start_with};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use std::time::Duration;
use tokio::time::timeout;

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    from(json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}))
}

const WAIT: Duration = Duration::from_secs(10);

async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<String, watcher::Error>>,
) -> String {
    match timeout(WAIT, rx.recv())
        .await
        .expect("watcher event in time")
        .unwrap()
    {
        Ok(ev) => ev,
        Err(watcher::Error::WatchError(s)) => format!("error {}", s.code),
        Err(e) => panic!("watcher failed: {e}"),
    }
}

#[tokio::test]
async fn raw_watch_sees_added_modified_deleted_in_order_from_a_resource_version() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let before = cms
        .create(&PostParams::default(), &cm("old", json!({})))
        .await
        .unwrap();
    let rv = before.resource_version().unwrap();

    cms.create(&PostParams::default(), &cm("x", json!({})))
        .await
        .unwrap();
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .unwrap();
    cms.delete("x", &DeleteParams::default()).await.unwrap();

    // Events after `rv` only (not "old"), in order, with increasing resourceVersions.
    let mut stream = cms
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match timeout(WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(o) => {
                seen.push(("ADDED", o.name_any(), o.resource_version().unwrap()))
            }
            WatchEvent::Modified(o) => {
                seen.push(("MODIFIED", o.name_any(), o.resource_version().unwrap()))
            }
            WatchEvent::Deleted(o) => {
                seen.push(("DELETED", o.name_any(), o.resource_version().unwrap()))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let kinds: Vec<_> = seen.iter().map(|(k, n, _)| (*k, n.as_str())).collect();
    assert_eq!(
        kinds,
        vec![("ADDED", "x"), ("MODIFIED", "x"), ("DELETED", "x")]
    );
    let rvs: Vec<u64> = seen.iter().map(|(_, _, rv)| rv.parse().unwrap()).collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");
}

#[tokio::test]
async fn compacted_resource_version_gets_410_expired() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let a = cms
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    server.store().compact();
    cms.create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    let old = (a.resource_version().unwrap().parse::<u64>().unwrap() - 1).to_string();
    let mut stream = cms
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_and_selector_transitions() {
    let config = ApiServerConfig {
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let (_server, client) = start_with(config).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let start_rv = cms
        .create(&PostParams::default(), &cm("c", json!({"sel": "no"})))
        .await
        .unwrap()
        .resource_version()
        .unwrap();
    let wp = WatchParams::default().labels("sel=yes");
    let mut stream = cms.watch(&wp, &start_rv).await.unwrap().boxed();
    let pp = PatchParams::default();
    cms.patch(
        "c",
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"sel": "yes"}}})),
    )
    .await
    .unwrap();
    cms.patch("c", &pp, &Patch::Merge(json!({"data": {"k": "2"}})))
        .await
        .unwrap();
    let last = cms
        .patch(
            "c",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"sel": "no"}}})),
        )
        .await
        .unwrap();
    let mut kinds = Vec::new();
    let mut bookmark_rv = None;
    while bookmark_rv.is_none() || kinds.len() < 3 {
        match timeout(WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(_) => kinds.push("ADDED"),
            WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            WatchEvent::Deleted(_) => kinds.push("DELETED"),
            WatchEvent::Bookmark(b) => {
                bookmark_rv = Some(b.metadata.resource_version.parse::<u64>().unwrap())
            }
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    // Entering the selection is ADDED, leaving it DELETED, as with the real server.
    assert_eq!(kinds, vec!["ADDED", "MODIFIED", "DELETED"]);
    assert!(bookmark_rv.unwrap() >= last.resource_version().unwrap().parse::<u64>().unwrap());
}

#[tokio::test]
async fn kube_watcher_resumes_after_the_server_closes_watches_and_relists_after_410() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let w = watcher(cms.clone(), watcher::Config::default());
    let task = tokio::spawn(async move {
        let mut w = w.boxed();
        while let Some(ev) = w.next().await {
            let _ = tx.send(ev.map(|e| match e {
                watcher::Event::Apply(o) => {
                    format!("apply {} {}", o.name_any(), o.data.unwrap()["k"])
                }
                watcher::Event::Delete(o) => format!("delete {}", o.name_any()),
                watcher::Event::Init => "init".into(),
                watcher::Event::InitApply(o) => format!("initapply {}", o.name_any()),
                watcher::Event::InitDone => "initdone".into(),
            }));
        }
    });
    assert_eq!(next(&mut rx).await, "init");
    assert_eq!(next(&mut rx).await, "initdone");
    // The watch is established once a watch request has been logged.
    common::eventually("watch request", || async {
        server
            .requests()
            .iter()
            .any(|r| r.query.contains("watch=true"))
            .then_some(())
    })
    .await;

    cms.create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, "apply a v");
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "w"}})),
    )
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await, "apply a w");

    // The server ends every watch; kube re-watches from its last resourceVersion: no relist,
    // nothing missed, nothing repeated.
    server.store().close_watches();
    cms.create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(next(&mut rx).await, "apply b v");
    assert_eq!(next(&mut rx).await, "delete a");
    let lists = |s: &ambit_apisim::ApiServerHandle| {
        s.requests()
            .iter()
            .filter(|r| r.method == "GET" && !r.query.contains("watch"))
            .count()
    };
    assert_eq!(lists(&server), 1);
    let rewatch = server
        .requests()
        .into_iter()
        .filter(|r| r.query.contains("watch=true"))
        .nth(1)
        .expect("a second watch");
    assert!(
        rewatch.query.contains("resourceVersion="),
        "{}",
        rewatch.query
    );

    // Writes elsewhere move the global resourceVersion past the watcher's last one; after a
    // compaction its resumed watch gets 410 and kube relists.
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "default"}});
    server.store().create(secret).unwrap();
    server.store().compact();
    server.store().close_watches();
    cms.create(&PostParams::default(), &cm("c", json!({})))
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.contains(&"initdone".to_string()) {
        got.push(next(&mut rx).await);
    }
    assert_eq!(got[0], "error 410", "{got:?}");
    assert!(got.contains(&"init".to_string()), "{got:?}");
    assert!(
        got.contains(&"initapply c".to_string()) && got.contains(&"initapply b".to_string()),
        "{got:?}"
    );
    assert_eq!(lists(&server), 2);
    task.abort();
}

#[tokio::test]
async fn kube_watcher_with_streaming_lists() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("pre", json!({})))
        .await
        .unwrap();
    let mut w = watcher(cms.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut init = Vec::new();
    loop {
        match timeout(WAIT, w.try_next()).await.unwrap().unwrap().unwrap() {
            watcher::Event::Init => {}
            watcher::Event::InitApply(o) => init.push(o.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(init, vec!["pre"]);
    cms.create(&PostParams::default(), &cm("post", json!({})))
        .await
        .unwrap();
    match timeout(WAIT, w.try_next()).await.unwrap().unwrap().unwrap() {
        watcher::Event::Apply(o) => assert_eq!(o.name_any(), "post"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn many_watchers_and_writers() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = server.store().resource_version().to_string();
    const WATCHERS: usize = 16;
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 40;
    let total = WRITERS * PER_WRITER * 2; // each object is created, then modified
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let stream = cms
            .watch(&WatchParams::default().disable_bookmarks(), &rv)
            .await
            .unwrap();
        watchers.push(tokio::spawn(async move {
            let mut stream = stream.boxed();
            let mut rvs = Vec::new();
            while rvs.len() < total {
                match timeout(Duration::from_secs(30), stream.try_next())
                    .await
                    .expect("events keep flowing")
                    .unwrap()
                    .unwrap()
                {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                        rvs.push(o.resource_version().unwrap().parse::<u64>().unwrap())
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            rvs
        }));
    }
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let cms: Api<ConfigMap> = Api::namespaced(client_for(&server), "default");
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let name = format!("w{w}-{i}");
                cms.create(&PostParams::default(), &cm(&name, json!({})))
                    .await
                    .unwrap();
                cms.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"k": "2"}})),
                )
                .await
                .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut first: Option<Vec<u64>> = None;
    for w in watchers {
        let rvs = w.await.unwrap();
        assert!(rvs.windows(2).all(|p| p[0] < p[1]), "in order");
        match &first {
            None => first = Some(rvs),
            Some(f) => assert_eq!(f, &rvs, "every watcher sees the same events"),
        }
    }
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_closed_with_410_without_blocking_writers() {
    let config = ApiServerConfig {
        watch_buffer: 4,
        ..Default::default()
    };
    let (server, client) = start_with(config).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = server.store().resource_version().to_string();
    let stream = cms
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap();
    common::eventually("watch registered", || async {
        (server.store().watcher_count() == 1).then_some(())
    })
    .await;
    // Never read the stream while writing ~12 MiB: socket buffers fill, then the watch buffer.
    let big = "x".repeat(256 * 1024);
    let store = server.store();
    let writes = tokio::task::spawn_blocking(move || {
        for i in 0..48 {
            let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("big-{i}"), "namespace": "default"}, "data": {"k": big}});
            store.create(obj).unwrap();
        }
    });
    timeout(Duration::from_secs(20), writes)
        .await
        .expect("writers are never blocked by a slow watcher")
        .unwrap();
    assert_eq!(
        server.store().watcher_count(),
        0,
        "the slow watcher was dropped"
    );
    let mut stream = stream.boxed();
    let mut added = 0;
    loop {
        match timeout(WAIT, stream.try_next()).await.unwrap() {
            Ok(Some(WatchEvent::Added(_))) => added += 1,
            Ok(Some(WatchEvent::Error(e))) => {
                assert_eq!(e.code, 410);
                break;
            }
            other => panic!("expected events then a 410 ERROR, got {other:?}"),
        }
    }
    assert!(added < 48, "the stream ended early ({added} events)");
}
