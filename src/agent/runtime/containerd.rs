//! containerd over CRI.
