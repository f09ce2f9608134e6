//! Client compatibility: the two most used Kubernetes clients outside Go, unmodified, against a
//! real 3-member skiff cluster with its admin kubeconfig — the Python `kubernetes` package from
//! PyPI (tests/clients/python_client.py) and kube-rs (the `kube` crate). Each lists (with label
//! selectors and pages), creates, patches (merge/strategic, JSON patch, server-side apply, the
//! scale subresource) and watches ConfigMaps and a Deployment.
//!
//! A missing Python or `kubernetes` package fails the test (CI installs both in .ci/run): a
//! skipped compatibility test would pass for the wrong reason.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Cluster;
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;

#[test]
fn python_kubernetes_client_lists_creates_patches_and_watches() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import kubernetes; print(kubernetes.__version__)"])
        .output()
        .unwrap_or_else(|e| {
            panic!("{python} cannot run ({e}): install Python 3 and `pip install kubernetes` (.ci/run does)")
        });
    assert!(
        probe.status.success(),
        "the Python kubernetes client is missing (`pip install kubernetes`, as .ci/run does): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    eprintln!(
        "python kubernetes client {}",
        String::from_utf8_lossy(&probe.stdout).trim()
    );

    let cluster = Cluster::start(111, 3, &["--cluster-dns-listen", "off"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python_client.py");
    let kubeconfig = cluster.nodes[0].data.join("admin.kubeconfig");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&kubeconfig)
        .arg("python-client")
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("python-client: all passed"),
        "python client failed ({:?})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kube_rs_lists_creates_patches_and_watches() {
    let cluster = Cluster::start(112, 3, &["--cluster-dns-listen", "off"]);
    let kubeconfig = cluster.nodes[0].data.join("admin.kubeconfig");
    let runtime = common::runtime();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), kube_rs_flows(&kubeconfig))
            .await
            .expect("kube-rs flows finished in time")
    });
}

async fn client_from(kubeconfig: &Path) -> kube::Client {
    let file = kube::config::Kubeconfig::read_from(kubeconfig).expect("read the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .expect("kube config from the admin kubeconfig");
    kube::Client::try_from(config).expect("kube client")
}

async fn kube_rs_flows(kubeconfig: &Path) {
    let client = client_from(kubeconfig).await;
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.major, "1");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = "kube-rs";
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace");
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create the namespace");
    let all = namespaces.list(&ListParams::default()).await.expect("list");
    assert!(
        all.items
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(ns))
    );

    // Create and list, with a label selector and pages of 2.
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for i in 0..5 {
        let map: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": format!("page-{i}"), "labels": {"set": "pages"}},
            "data": {"i": i.to_string()},
        }))
        .expect("configmap");
        maps.create(&PostParams::default(), &map)
            .await
            .expect("create a ConfigMap");
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params = ListParams::default().labels("set=pages").limit(2);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = maps.list(&params).await.expect("list a page");
        pages += 1;
        names.extend(page.items.into_iter().filter_map(|m| m.metadata.name));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    names.sort();
    assert_eq!(
        names,
        (0..5).map(|i| format!("page-{i}")).collect::<Vec<_>>()
    );
    assert_eq!(pages, 3, "5 objects in pages of 2");

    // Watch from the creation's resourceVersion while patching (merge, then server-side apply)
    // and deleting: the events arrive in order.
    let created = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "rs-cm", "labels": {"app": "rs"}},
                "data": {"k": "v1"},
            }))
            .expect("configmap"),
        )
        .await
        .expect("create rs-cm");
    let rv = created
        .metadata
        .resource_version
        .clone()
        .expect("resourceVersion");
    let stream = maps
        .watch(&WatchParams::default().labels("app=rs").timeout(60), &rv)
        .await
        .expect("start the watch");
    let watched = tokio::spawn(async move {
        let mut stream = Box::pin(stream);
        let mut seen = Vec::new();
        while let Some(event) = stream.try_next().await.expect("watch event") {
            let (kind, map) = match event {
                WatchEvent::Added(m) => ("ADDED", m),
                WatchEvent::Modified(m) => ("MODIFIED", m),
                WatchEvent::Deleted(m) => ("DELETED", m),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => panic!("watch error: {e:?}"),
            };
            let data = map.data.unwrap_or_default();
            seen.push((kind, data.get("k").cloned(), data.get("owner").cloned()));
            if kind == "DELETED" {
                break;
            }
        }
        seen
    });

    let merged = maps
        .patch(
            "rs-cm",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v2"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        merged.data.unwrap_or_default().get("k").map(String::as_str),
        Some("v2")
    );
    let applied = maps
        .patch(
            "rs-cm",
            &PatchParams::apply("kube-rs").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "rs-cm"},
                "data": {"owner": "kube-rs"},
            })),
        )
        .await
        .expect("server-side apply");
    let managers: Vec<String> = applied
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.iter().any(|m| m == "kube-rs"),
        "kube-rs manages fields: {managers:?}"
    );
    maps.delete("rs-cm", &DeleteParams::default())
        .await
        .expect("delete");
    let seen = tokio::time::timeout(Duration::from_secs(30), watched)
        .await
        .expect("the watch ends with DELETED")
        .expect("watch task");
    let v2 = Some("v2".to_string());
    let owner = Some("kube-rs".to_string());
    assert_eq!(
        seen,
        vec![
            ("MODIFIED", v2.clone(), None),
            ("MODIFIED", v2.clone(), owner.clone()),
            ("DELETED", v2, owner),
        ],
        "watch events in order"
    );

    // A Deployment: create, scale through the subresource, server-side apply, read back.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "busybox", "command": ["sleep", "3600"]}]},
            },
        },
    }))
    .expect("deployment");
    let made = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the Deployment");
    let strategy = made
        .spec
        .and_then(|s| s.strategy)
        .and_then(|s| s.type_)
        .unwrap_or_default();
    assert_eq!(strategy, "RollingUpdate", "defaulted");
    let scale = deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("patch the scale subresource");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    let read = deployments.get_scale("web").await.expect("get scale");
    assert_eq!(read.spec.and_then(|s| s.replicas), Some(3));
    let applied = deployments
        .patch(
            "web",
            &PatchParams::apply("kube-rs"),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "annotations": {"owner": "kube-rs"}},
            })),
        )
        .await
        .expect("server-side apply on the Deployment");
    assert_eq!(
        applied
            .metadata
            .annotations
            .unwrap_or_default()
            .get("owner")
            .map(String::as_str),
        Some("kube-rs")
    );
    assert_eq!(applied.spec.and_then(|s| s.replicas), Some(3));
    let listed = deployments
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list Deployments");
    assert_eq!(listed.items.len(), 1);

    match maps.get("absent").await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("a missing object should be a 404: {other:?}"),
    }
    namespaces
        .delete(ns, &DeleteParams::default())
        .await
        .expect("delete the namespace");
}
