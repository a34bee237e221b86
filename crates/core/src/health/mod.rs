//! Health gates, the decisions: each check's outcome from what was measured and the
//! node's verdict ([`gates`]), and the arithmetic on samples ([`verdicts`]). The agent
//! crate's `health` module fetches what they judge.

pub mod gates;
pub mod verdicts;
