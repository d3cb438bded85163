//! The register's Docker source: the engine's labelled containers and their event stream.

use std::{collections::HashMap, pin::Pin};

use bollard::{
    models::{ContainerInspectResponse, EventMessage},
    query_parameters::{EventsOptions, ListContainersOptions},
    Docker, API_DEFAULT_VERSION,
};
use futures_util::{Stream, StreamExt as _};
use tracing::debug;

use super::{
    events::{self, Change},
    labels,
    source::Source,
};
use crate::error::{Error, Result};

/// Connects to the Docker engine, agreeing on an API version it speaks.
pub async fn connect_docker(path: &str) -> Result<Docker> {
    let docker = Docker::connect_with_unix(path, 30, API_DEFAULT_VERSION).map_err(|source| {
        Error::Docker {
            what: format!("connecting to {path}"),
            source,
        }
    })?;
    docker
        .negotiate_version()
        .await
        .map_err(|source| Error::Docker {
            what: format!("talking to {path}"),
            source,
        })
}

type Events = Pin<Box<dyn Stream<Item = Result<EventMessage, bollard::errors::Error>> + Send>>;

/// The Docker engine at a socket path, as the register's [`Source`].
pub struct DockerEngine {
    path: String,
    /// The engine and its event stream, once opened.
    open: Option<(Docker, Events)>,
}

impl DockerEngine {
    /// The engine at `path` (a Unix socket); nothing is connected before [`Source::open`].
    pub fn new(path: &str) -> Self {
        Self {
            path: path.to_owned(),
            open: None,
        }
    }

    fn docker(&self) -> Result<&Docker> {
        self.open
            .as_ref()
            .map(|(d, _)| d)
            .ok_or_else(|| Error::Docker {
                what: "using the engine".into(),
                source: bollard::errors::Error::IOError {
                    err: std::io::Error::other("not connected"),
                },
            })
    }
}

impl Source for DockerEngine {
    fn kind(&self) -> &'static str {
        "Docker"
    }

    fn name(&self) -> String {
        self.path.clone()
    }

    async fn open(&mut self) -> Result<()> {
        self.open = None;
        let docker = connect_docker(&self.path).await?;
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![labels::SERVICE.to_owned()]),
        ]);
        let stream = docker.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }));
        self.open = Some((docker, Box::pin(stream)));
        Ok(())
    }

    async fn list(&mut self) -> Result<Vec<ContainerInspectResponse>> {
        let docker = self.docker()?;
        let filters = HashMap::from([("label".to_owned(), vec![labels::SERVICE.to_owned()])]);
        let list = docker
            .list_containers(Some(ListContainersOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|source| Error::Docker {
                what: "listing containers".into(),
                source,
            })?;
        let mut out = Vec::with_capacity(list.len());
        for summary in list {
            let Some(id) = summary.id else { continue };
            match docker.inspect_container(&id, None).await {
                Ok(c) => out.push(c),
                // Gone between the list and the inspect: not running any more.
                Err(e) => debug!(container = %id, "inspect failed: {e}"),
            }
        }
        Ok(out)
    }

    async fn inspect(&mut self, id: &str) -> Option<ContainerInspectResponse> {
        match self.docker().ok()?.inspect_container(id, None).await {
            Ok(c) => Some(c),
            Err(e) => {
                debug!(container = %id, "inspect failed: {e}");
                None
            }
        }
    }

    async fn next_event(&mut self) -> Result<(Change, String)> {
        let Some((_, stream)) = self.open.as_mut() else {
            return Err(closed());
        };
        loop {
            match stream.next().await {
                Some(Ok(ev)) => {
                    if let Some((change, id)) = events::parse(&ev) {
                        return Ok((change, id.to_owned()));
                    }
                }
                Some(Err(source)) => {
                    return Err(Error::Docker {
                        what: "the event stream failed".into(),
                        source,
                    })
                }
                None => return Err(closed()),
            }
        }
    }
}

fn closed() -> Error {
    Error::Docker {
        what: "following events".into(),
        source: bollard::errors::Error::IOError {
            err: std::io::Error::other("the event stream closed"),
        },
    }
}
