//! The Kubernetes client, configured as kubectl would be: `--kubeconfig`, else KUBECONFIG or
//! `~/.kube/config`, else the pod's ServiceAccount; `--context`; the context's namespace.

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::cli::ConnectionArgs;
use crate::error::{Error, Result};

/// A client and the namespace commands act in when none is given.
pub struct Connection {
    pub client: kube::Client,
    pub namespace: String,
}

pub async fn connect(args: &ConnectionArgs) -> Result<Connection> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(Error::Kubeconfig)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(Error::Kubeconfig)?
        }
        // A context names an entry of a kubeconfig, which the in-cluster fallback has not.
        None if args.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(Error::Kubeconfig)?,
        None => kube::Config::infer().await.map_err(Error::InferConfig)?,
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(Error::Client)?;
    Ok(Connection { client, namespace })
}
