//! The static configuration file (`ambassador run --config FILE`), validated once at the edge:
//! what comes out is a [`Desired`] state that the planner can install as it is.

use std::{ops::Range, path::Path, sync::Arc};

use serde::Deserialize;
use toml::Spanned;

use crate::core::{
    model::{
        check_service_name, parse_addr, parse_proto, parse_weight, Desired, Endpoint, Proto,
        ServiceSpec,
    },
    reconcile,
};

/// A configuration file that cannot be used, located as precisely as possible.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// 1-based line (0 when the problem is the whole file).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    frontend: Spanned<String>,
    proto: Option<Spanned<String>>,
    #[serde(default)]
    endpoints: Vec<Spanned<RawEndpoint>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawEndpoint {
    Addr(String),
    Weighted { addr: String, weight: Option<i64> },
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Desired, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.display().to_string(),
        line: 0,
        column: 0,
        message: format!("cannot read the file: {e}"),
    })?;
    parse(&path.display().to_string(), &text)
}

/// Validates configuration text; `path` only names it in errors.
pub fn parse(path: &str, text: &str) -> Result<Desired, ConfigError> {
    let err = |span: Option<Range<usize>>, message: String| {
        let (line, column) = span.map_or((0, 0), |s| line_col(text, s.start));
        ConfigError {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| err(e.span(), e.message().to_owned()))?;

    let mut desired = Desired::new();
    for svc in raw.service {
        let name = svc.name.get_ref();
        check_service_name(name).map_err(|m| err(Some(svc.name.span()), m))?;
        if desired.contains_key(name) {
            return Err(err(
                Some(svc.name.span()),
                format!("service {name:?} is defined twice"),
            ));
        }
        let frontend = parse_addr(svc.frontend.get_ref())
            .map_err(|m| err(Some(svc.frontend.span()), format!("frontend: {m}")))?;
        let proto = match &svc.proto {
            None => Proto::Tcp,
            Some(p) => parse_proto(p.get_ref()).map_err(|m| err(Some(p.span()), m))?,
        };
        let mut endpoints = Vec::new();
        for raw_ep in &svc.endpoints {
            let (addr, weight) = match raw_ep.get_ref() {
                RawEndpoint::Addr(a) => (a, None),
                RawEndpoint::Weighted { addr, weight } => (addr, *weight),
            };
            let addr =
                parse_addr(addr).map_err(|m| err(Some(raw_ep.span()), format!("endpoint: {m}")))?;
            let weight = parse_weight(weight)
                .map_err(|m| err(Some(raw_ep.span()), format!("endpoint {m}")))?;
            endpoints.push(Endpoint { addr, weight });
        }
        desired.insert(
            name.clone(),
            Arc::new(ServiceSpec {
                frontend,
                proto,
                endpoints,
            }),
        );
    }
    reconcile::validate(&desired).map_err(|e| err(None, e.to_string()))?;
    Ok(desired)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[service]]
name = "web"                 # DNS label
frontend = "10.96.0.10:80"
proto = "tcp"
endpoints = ["10.210.2.2:8080", { addr = "10.210.2.2:8081", weight = 3 }]

[[service]]
name = "dns"
frontend = "10.96.0.53:53"
proto = "udp"
"#;

    #[test]
    fn parses_the_documented_example() {
        let d = parse("t.toml", GOOD).unwrap();
        assert_eq!(d.len(), 2);
        let web = &d["web"];
        assert_eq!(web.frontend, "10.96.0.10:80".parse().unwrap());
        assert_eq!(web.endpoints[1].weight, 3);
        assert_eq!(d["dns"].proto, Proto::Udp);
        assert!(d["dns"].endpoints.is_empty());
        assert!(parse("t.toml", "").unwrap().is_empty());
    }

    fn error_of(text: &str) -> ConfigError {
        parse("t.toml", text).unwrap_err()
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let e = error_of("[[service]]\nname = \"Web\"\nfrontend = \"10.96.0.10:80\"\n");
        assert_eq!((e.line, e.column), (2, 8), "{e}");
        assert!(e.message.contains("DNS label"), "{e}");

        let e = error_of("[[service]]\nname = \"web\"\nfrontend = \"10.96.0.10\"\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("frontend"), "{e}");

        let e = error_of(
            "[[service]]\nname = \"web\"\nfrontend = \"10.96.0.10:80\"\nproto = \"sctp\"\n",
        );
        assert_eq!(e.line, 4, "{e}");

        let e = error_of(
            "[[service]]\nname = \"web\"\nfrontend = \"10.96.0.10:80\"\nendpoints = [\n  \"1.2.3.4:5\",\n  \"1.2.3.4:0\",\n]\n",
        );
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("port 0"), "{e}");

        let e = error_of("[[service]]\nname = \"web\"\nfrontend = \"[fe80::1%2]:80\"\n");
        assert!(e.message.contains("scope id"), "{e}");

        let e = error_of("[[service]]\nname = \"web\"\nfrontnd = \"10.96.0.10:80\"\n");
        assert!(e.line >= 1 && e.message.contains("frontnd"), "{e}");

        let e = error_of("[[service]\n");
        assert_eq!(e.line, 1, "{e}");

        let e = error_of(&format!(
            "{GOOD}\n[[service]]\nname = \"web\"\nfrontend = \"10.96.0.11:80\"\n"
        ));
        assert!(e.message.contains("twice"), "{e}");

        let e = error_of("[[service]]\nname = \"a\"\nfrontend = \"10.96.0.10:80\"\n[[service]]\nname = \"b\"\nfrontend = \"10.96.0.10:80\"\n");
        assert!(e.message.contains("both use frontend"), "{e}");

        let e = error_of("[[service]]\nname = \"a\"\nfrontend = \"10.96.0.10:80\"\nendpoints = [{ addr = \"1.2.3.4:5\", weight = 0 }]\n");
        assert!(e.message.contains("weight"), "{e}");
        assert_eq!(
            e.to_string(),
            format!("t.toml:{}:{}: {}", e.line, e.column, e.message)
        );
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "web", "my-db-2", &"a".repeat(63)] {
            assert!(check_service_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "é"] {
            assert!(check_service_name(bad).is_err(), "{bad}");
        }
    }
}
