//! Health gates, the decisions: each check's outcome from what was measured and the
//! node's verdict ([`gates`]), the arithmetic on samples ([`verdicts`]), the bounds on a
//! node's gate task — its deadline, its rounds, the scrapes it keeps ([`rounds`]) — and
//! the connections still open through an old ztunnel and whether it may go
//! ([`connections`]), the mesh-wide breaker ([`mesh`]), the reading of Prometheus answers ([`query_answer`]) and of ztunnel's metrics text
//! ([`exposition`]), the Prometheus URLs a rollout may name ([`url_policy`]) and the
//! Secret keys its queries authenticate with ([`credentials`]). The agent crate's
//! `health` module fetches what they judge.

pub mod connections;
pub mod credentials;
pub mod exposition;
pub mod gates;
pub mod mesh;
pub mod query_answer;
pub mod rounds;
pub mod url_policy;
pub mod verdicts;
