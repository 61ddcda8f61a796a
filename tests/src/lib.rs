//! The test harness: real servers started as plain processes on 127.0.0.1 for the
//! integration and end-to-end tests of audit-operator and audit-consumer.
//!
//! - [`testenv`] finds the pinned server binaries (built by `hack/testenv.sh`).
//! - [`nats`] runs a JetStream-enabled nats-server, or a 3-node cluster, that a test can stop
//!   and restart to simulate an outage, or reconfigure in place.
//! - [`kube_env`] runs a Kubernetes control plane (etcd, kube-apiserver,
//!   kube-controller-manager) once per test binary, with admin and impersonating clients and a
//!   fresh namespace per test.
//! - [`node`] is a real node (containerd, kubelet, kube-scheduler, kube-proxy) attached to
//!   that control plane, running the [`images`] the Dockerfile builds.
//! - [`kubelet`] is a small local kubelet: it registers a Node, binds a namespace's pods to
//!   it and runs their containers as local processes, reporting their real status.
//! - [`s3`] runs an S3-compatible object store (versitygw) with Object Lock for the archive
//!   output.
//! - [`process`] guarantees that no server outlives the test that started it.
//! - [`manifests`] generates the Kustomize base from the Helm chart.
//! - [`api_reference`] generates `docs/reference/api.md` from the CRDs; [`docs`] reads the
//!   Markdown pages (their links, anchors and YAML examples) for the tests that check them.

pub mod api_reference;
pub mod certs;
pub mod docs;
pub mod http;
pub mod images;
pub mod kube_env;
pub mod kubelet;
pub mod manifests;
pub mod nats;
pub mod nats_accounts;
pub mod node;
pub mod operator;
pub mod pod_logs;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod s3;
pub mod testenv;
pub mod tools;
pub mod wait;

pub use testenv::{bin_dir, cargo_bin};
