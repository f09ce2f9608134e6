//! Cluster DNS for skiff (hickory-server zone handler). Built by the DNS issue.
