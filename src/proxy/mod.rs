//! kube-proxy: programs the node's packet filter so Service addresses reach ready endpoints.
