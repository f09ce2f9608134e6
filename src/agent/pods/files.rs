//! The files the kubelet writes for every pod: /etc/hosts (hostname, subdomain FQDN,
//! hostAliases) and /etc/resolv.conf (cluster DNS with the search path and ndots:5).

use crate::json_path::JsonPath;
use serde_json::Value;

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.at(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The pod's hostname: spec.hostname, else its name (truncated to 63 characters).
pub fn hostname(pod: &Value) -> String {
    let name = match text(pod, "/spec/hostname") {
        "" => text(pod, "/metadata/name"),
        h => h,
    };
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

pub fn etc_hosts(pod: &Value, ip: &str, cluster_domain: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let host = hostname(pod);
    let subdomain = text(pod, "/spec/subdomain");
    if subdomain.is_empty() {
        out.push_str(&format!("{ip}\t{host}\n"));
    } else {
        let ns = text(pod, "/metadata/namespace");
        out.push_str(&format!(
            "{ip}\t{host}.{subdomain}.{ns}.svc.{cluster_domain}\t{host}\n"
        ));
    }
    let aliases = pod.at("/spec/hostAliases").and_then(Value::as_array);
    if aliases.is_some_and(|a| !a.is_empty()) {
        out.push_str("\n# Entries added by HostAliases.\n");
    }
    for alias in aliases.into_iter().flatten() {
        let names: Vec<&str> = alias
            .get("hostnames")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(&format!("{}\t{}\n", text(alias, "/ip"), names.join("\t")));
    }
    out
}

/// resolv.conf for the pod's dnsPolicy; `host` is the node's own resolv.conf.
pub fn resolv_conf(
    pod: &Value,
    cluster_dns: Option<&str>,
    cluster_domain: &str,
    host: &str,
) -> String {
    let host_network = pod
        .at("/spec/hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let policy = match text(pod, "/spec/dnsPolicy") {
        "" => "ClusterFirst",
        p => p,
    };
    let mut out = match (policy, cluster_dns) {
        ("None", _) => String::new(),
        ("ClusterFirst", Some(dns)) if !host_network => cluster(pod, dns, cluster_domain),
        ("ClusterFirstWithHostNet", Some(dns)) => cluster(pod, dns, cluster_domain),
        _ => host.to_string(),
    };
    if let Some(config) = pod.at("/spec/dnsConfig") {
        for ns in config
            .get("nameservers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push_str(&format!("nameserver {}\n", ns.as_str().unwrap_or("")));
        }
        let searches: Vec<&str> = config
            .get("searches")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !searches.is_empty() {
            out.push_str(&format!("search {}\n", searches.join(" ")));
        }
        for option in config
            .get("options")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match option.get("value").and_then(Value::as_str) {
                Some(v) => out.push_str(&format!("options {}:{v}\n", text(option, "/name"))),
                None => out.push_str(&format!("options {}\n", text(option, "/name"))),
            }
        }
    }
    out
}

fn cluster(pod: &Value, dns: &str, domain: &str) -> String {
    let ns = text(pod, "/metadata/namespace");
    format!("search {ns}.svc.{domain} svc.{domain} {domain}\nnameserver {dns}\noptions ndots:5\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statefulset_pods_get_their_fqdn_and_aliases() {
        let pod = json!({"metadata": {"name": "web-0", "namespace": "default"},
            "spec": {"hostname": "web-0", "subdomain": "nginx",
                "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}});
        let hosts = etc_hosts(&pod, "10.42.0.5", "cluster.local");
        assert!(hosts.contains("10.42.0.5\tweb-0.nginx.default.svc.cluster.local\tweb-0\n"));
        assert!(hosts.contains("10.1.2.3\tfoo.local\tbar.local\n"));
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns() {
        let pod = json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": {}});
        let conf = resolv_conf(
            &pod,
            Some("10.43.0.10"),
            "cluster.local",
            "nameserver 1.1.1.1\n",
        );
        assert_eq!(
            conf,
            "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
        let host_net =
            json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": {"hostNetwork": true}});
        assert_eq!(
            resolv_conf(
                &host_net,
                Some("10.43.0.10"),
                "cluster.local",
                "nameserver 1.1.1.1\n"
            ),
            "nameserver 1.1.1.1\n"
        );
    }
}
