//! Suricata 7 on a monitor interface for the testbed.
