//! The containerd proxy snapshotter: containerd's snapshots API
//! (`containerd.services.snapshots.v1`) served over gRPC on a unix socket,
//! on the store's snapshots ([`crate::store::snapshots`]).
//!
//! containerd performs the mounts it gets back: a bind mount for a
//! snapshot without parents, else `fuse3.layerfs`, which `mount.fuse3`
//! turns into `layerfs SOURCE TARGET -o lowerdir=…,upperdir=…,workdir=…`.
//! So this service holds no mount of its own, and a restart of it (or of
//! containerd) loses nothing: all state is the store's table.
//!
//! The bindings and the server wrapper are the `containerd-snapshots`
//! crate's (containerd/rust-extensions): the protos stay containerd's own.
//! Every call runs on tokio's blocking pool, since it does file I/O and
//! takes the store's flock.

mod filter;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::{self, Status};
use containerd_snapshots::{Info, Kind, Snapshotter, Usage};
use tokio_stream::Stream;

use crate::store::snapshots::{
    SnapshotError, SnapshotInfo, SnapshotKind, SnapshotMount, Snapshots,
};

pub use filter::Filters;

/// Where containerd's config points by default.
pub const DEFAULT_ADDRESS: &str = "/run/layerfs/snapshotter.sock";

impl From<SnapshotError> for Status {
    fn from(e: SnapshotError) -> Status {
        match &e {
            SnapshotError::NotFound(_) => Status::not_found(e.to_string()),
            SnapshotError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            SnapshotError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            SnapshotError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            SnapshotError::Store(_) => {
                tracing::error!("snapshot store: {e}");
                Status::internal(e.to_string())
            }
        }
    }
}

/// The service: [`Snapshots`] behind containerd's `Snapshotter` trait.
pub struct Service {
    snapshots: Arc<Snapshots>,
}

impl Service {
    pub fn new(snapshots: Snapshots) -> Service {
        Service {
            snapshots: Arc::new(snapshots),
        }
    }

    /// Runs `f` on the blocking pool with the snapshots.
    async fn call<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshots) -> Result<T, SnapshotError> + Send + 'static,
    {
        let s = Arc::clone(&self.snapshots);
        match tokio::task::spawn_blocking(move || f(&s)).await {
            Ok(r) => r.map_err(Status::from),
            Err(e) => {
                tracing::error!("snapshot call failed: {e}");
                Err(Status::internal(format!("snapshot call failed: {e}")))
            }
        }
    }
}

fn to_mounts(ms: Vec<SnapshotMount>) -> Vec<Mount> {
    ms.into_iter()
        .map(|m| Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn to_info(s: SnapshotInfo) -> Info {
    Info {
        kind: match s.kind {
            SnapshotKind::View => Kind::View,
            SnapshotKind::Active => Kind::Active,
            SnapshotKind::Committed => Kind::Committed,
        },
        name: s.key,
        parent: s.parent,
        labels: s.labels,
        created_at: s.created,
        updated_at: s.updated,
    }
}

fn from_info(i: Info) -> SnapshotInfo {
    SnapshotInfo {
        kind: match i.kind {
            Kind::View => SnapshotKind::View,
            Kind::Committed => SnapshotKind::Committed,
            Kind::Active | Kind::Unknown => SnapshotKind::Active,
        },
        key: i.name,
        parent: i.parent,
        labels: i.labels,
        created: i.created_at,
        updated: i.updated_at,
    }
}

type InfoStream = Pin<Box<dyn Stream<Item = Result<Info, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Snapshotter for Service {
    type Error = Status;

    async fn stat(&self, key: String) -> Result<Info, Status> {
        self.call(move |s| s.stat(&key)).await.map(to_info)
    }

    async fn update(&self, info: Info, paths: Option<Vec<String>>) -> Result<Info, Status> {
        let paths = paths.unwrap_or_default();
        self.call(move |s| s.update(from_info(info), &paths))
            .await
            .map(to_info)
    }

    async fn usage(&self, key: String) -> Result<Usage, Status> {
        let u = self.call(move |s| s.usage(&key)).await?;
        Ok(Usage {
            size: i64::try_from(u.size).unwrap_or(i64::MAX),
            inodes: i64::try_from(u.inodes).unwrap_or(i64::MAX),
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Status> {
        self.call(move |s| s.mounts(&key)).await.map(to_mounts)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        tracing::debug!(%key, %parent, "prepare");
        self.call(move |s| s.create(SnapshotKind::Active, &key, &parent, labels))
            .await
            .map(to_mounts)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        tracing::debug!(%key, %parent, "view");
        self.call(move |s| s.create(SnapshotKind::View, &key, &parent, labels))
            .await
            .map(to_mounts)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        tracing::debug!(%name, %key, "commit");
        self.call(move |s| s.commit(&name, &key, labels)).await
    }

    async fn remove(&self, key: String) -> Result<(), Status> {
        tracing::debug!(%key, "remove");
        self.call(move |s| s.remove(&key)).await
    }

    async fn clear(&self) -> Result<(), Status> {
        self.call(|s| s.cleanup().map(|_| ())).await
    }

    type InfoStream = InfoStream;

    // containerd-snapshots fixes the stream's item as `Result<Info, Status>`.
    #[allow(clippy::result_large_err)]
    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<InfoStream, Status> {
        let filters = Filters::parse(&filters).map_err(Status::invalid_argument)?;
        let all = self.call(|s| s.list()).await?;
        let items: Vec<Result<Info, Status>> = all
            .into_iter()
            .filter(|i| filters.matches(i))
            .map(|i| Ok(to_info(i)))
            .collect();
        Ok(Box::pin(tokio_stream::iter(items)))
    }
}

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Snapshots(#[from] SnapshotError),
    #[error("{path}: {reason}")]
    Socket { path: PathBuf, reason: String },
    #[error("gRPC server: {0}")]
    Grpc(String),
}

/// Serves the snapshots at `root` on unix socket `address` until SIGTERM
/// or SIGINT; `ready` runs once the socket accepts connections.
pub fn serve(root: &Path, address: &Path, ready: impl FnOnce()) -> Result<(), ServeError> {
    let snapshots = Snapshots::open(root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("snapshotter")
        .build()
        .map_err(|e| ServeError::Grpc(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = bind(address)?;
        tracing::info!(address = %address.display(), root = %snapshots.store().root().display(), "serving containerd snapshots");
        ready();
        let shutdown = async {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot watch SIGTERM: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            tracing::info!("shutting down");
        };
        let result = tonic::transport::Server::builder()
            .add_service(containerd_snapshots::server(Arc::new(Service::new(snapshots))))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                shutdown,
            )
            .await;
        let _ = std::fs::remove_file(address);
        result.map_err(|e| ServeError::Grpc(e.to_string()))
    })
}

/// Binds the socket: a leftover socket nobody answers on is replaced; a
/// live one means another snapshotter serves there, which is an error.
fn bind(address: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    let err = |reason: String| ServeError::Socket {
        path: address.to_path_buf(),
        reason,
    };
    if let Some(dir) = address.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create its directory: {e}")))?;
    }
    if address.exists() {
        if std::os::unix::net::UnixStream::connect(address).is_ok() {
            return Err(err("another process is serving on this socket".into()));
        }
        std::fs::remove_file(address)
            .map_err(|e| err(format!("cannot replace the stale socket: {e}")))?;
    }
    let listener = tokio::net::UnixListener::bind(address).map_err(|e| err(e.to_string()))?;
    // Only root (containerd) may talk to it: it can mount and delete.
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(format!("cannot restrict its mode: {e}")))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_snapshots::tonic::Code;

    /// The codes containerd's proxy client turns back into its own error
    /// kinds (errdefs.FromGRPC), through the trait as containerd calls it.
    fn code<T>(r: Result<T, Status>) -> Option<Code> {
        r.err().map(|s| s.code())
    }

    #[test]
    fn calls_fail_with_the_codes_containerd_understands() {
        let t = tempfile::tempdir().expect("tempdir");
        let svc = Service::new(Snapshots::open(t.path()).expect("open"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let none = HashMap::new;
            svc.prepare("a".into(), String::new(), none())
                .await
                .expect("prepare");
            assert_eq!(
                code(svc.prepare("a".into(), String::new(), none()).await),
                Some(Code::AlreadyExists)
            );
            assert_eq!(
                code(svc.view("v".into(), "gone".into(), none()).await),
                Some(Code::NotFound)
            );
            assert_eq!(code(svc.stat("gone".into()).await), Some(Code::NotFound));
            assert_eq!(
                code(svc.prepare("b".into(), "a".into(), none()).await),
                Some(Code::InvalidArgument)
            );
            svc.commit("base".into(), "a".into(), none())
                .await
                .expect("commit");
            svc.prepare("c".into(), "base".into(), none())
                .await
                .expect("prepare");
            assert_eq!(
                code(svc.remove("base".into()).await),
                Some(Code::FailedPrecondition)
            );
            assert_eq!(
                code(svc.mounts("base".into()).await),
                Some(Code::FailedPrecondition)
            );
            assert_eq!(
                code(
                    svc.list(String::new(), vec!["name~=(".into()])
                        .await
                        .map(|_| ())
                ),
                Some(Code::InvalidArgument)
            );
            let info = svc.stat("c".into()).await.expect("stat");
            assert_eq!((info.kind, info.parent.as_str()), (Kind::Active, "base"));
        });
    }
}
