//! Health gates. So far the pure verdict arithmetic ([`verdicts`]); the gates that scrape
//! ztunnel, query Prometheus and check waypoints are still to come.

pub mod verdicts;
