//! Counting probes: the extraction layer.
//!
//! A probe is a BPF object whose maps are exported as metrics. This module
//! turns those maps into JSON, fast and for any layout:
//!
//! - [`btf`] parses the object's BTF, finds each map's key and value types
//!   in its `.maps` definitions, and compiles a type once into a decode
//!   plan ([`btf::Layout`]) that turns raw bytes into `serde_json::Value`
//!   (structs, unions, enums, bitfields, arrays, strings, integers of every
//!   size), formats key fields as labels and aggregates per-CPU values;
//! - [`batch`] reads (or reads and resets) a whole map with batch syscalls,
//!   falling back to element-wise syscalls where the kernel has none, and
//!   drains queues and stacks;
//! - [`MapLayout`] ties the two together for one map of one object.
//!
//! The probe lifecycle (compile, inject, snapshot, REST) builds on this.

pub mod batch;
pub mod btf;
pub mod compile;
pub mod manager;
pub mod spec;

use serde_json::{Map, Value};

use self::batch::{BatchError, Entries};
use self::btf::{Aggregation, Btf, BtfError, Layout, MapDef};

/// Errors of the extraction layer as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// BTF parsing, layout or decoding.
    #[error(transparent)]
    Btf(#[from] BtfError),
    /// Reading the map.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The entries read do not have the sizes the layouts describe.
    #[error("map {map}: entries have {what} of {got} bytes, the BTF says {expected}")]
    SizeMismatch {
        /// The map.
        map: String,
        /// "keys" or "values".
        what: &'static str,
        /// Bytes per entry read.
        got: usize,
        /// Bytes the layout decodes.
        expected: usize,
    },
}

/// The decode plans of one map of an object: key and value layouts.
#[derive(Debug, Clone)]
pub struct MapLayout {
    /// The map's definition in the object.
    pub def: MapDef,
    /// How keys decode (empty for queues and stacks).
    pub key: Layout,
    /// How values decode (one CPU's slot for per-CPU maps).
    pub value: Layout,
}

impl MapLayout {
    /// The layouts of the map `name` of an object's BTF.
    pub fn new(btf: &Btf, name: &str) -> Result<MapLayout, ProbeError> {
        let def = btf.map(name)?;
        Ok(MapLayout {
            key: def.key_layout(btf)?,
            value: def.value_layout(btf)?,
            def,
        })
    }

    /// Checks that the entries have the sizes the layouts decode.
    fn check(&self, entries: &Entries) -> Result<(), ProbeError> {
        let expected = if entries.map_type().is_per_cpu() {
            self.value.per_cpu_stride() * entries.ncpus()
        } else {
            self.value.size()
        };
        let mismatch = |what, got, expected| ProbeError::SizeMismatch {
            map: self.def.name.clone(),
            what,
            got,
            expected,
        };
        if entries.value_len() != expected {
            return Err(mismatch("values", entries.value_len(), expected));
        }
        if entries.key_size() != self.key.size() {
            return Err(mismatch("keys", entries.key_size(), self.key.size()));
        }
        Ok(())
    }

    /// Decodes every entry into `{"key": …, "value": …}` (no `"key"` for
    /// queues and stacks). Per-CPU values are aggregated with `per_cpu`, or,
    /// when it is `None`, given as an array with one value per CPU.
    pub fn decode(
        &self,
        entries: &Entries,
        per_cpu: Option<Aggregation>,
    ) -> Result<Vec<Value>, ProbeError> {
        self.check(entries)?;
        let ncpus = entries.ncpus();
        let per_cpu_map = entries.map_type().is_per_cpu();
        let keyed = !entries.map_type().is_queue();
        // Cloning a prepared object beats inserting keys one by one.
        let mut template = Map::new();
        if keyed {
            template.insert("key".to_string(), Value::Null);
        }
        template.insert("value".to_string(), Value::Null);
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries.iter() {
            let value = match (per_cpu_map, per_cpu) {
                (false, _) => self.value.decode(v)?,
                (true, Some(how)) => self.value.aggregate(v, ncpus, how)?,
                (true, None) => Value::Array(self.value.decode_per_cpu(v, ncpus)?),
            };
            let mut m = template.clone();
            if let Some(slot) = m.get_mut("key") {
                *slot = self.key.decode(k)?;
            }
            if let Some(slot) = m.get_mut("value") {
                *slot = value;
            }
            out.push(Value::Object(m));
        }
        Ok(out)
    }

    /// Writes what [`MapLayout::decode`] returns, as a JSON array, straight
    /// from the bytes into `out` (the fast path for exporting). On error
    /// `out` holds a partial document.
    pub fn write_json(
        &self,
        entries: &Entries,
        per_cpu: Option<Aggregation>,
        out: &mut String,
    ) -> Result<(), ProbeError> {
        self.check(entries)?;
        let ncpus = entries.ncpus();
        let per_cpu_map = entries.map_type().is_per_cpu();
        let keyed = !entries.map_type().is_queue();
        out.reserve(entries.len() * (self.key.size() + self.value.size()) * 4);
        out.push('[');
        for (i, (k, v)) in entries.iter().enumerate() {
            out.push_str(if i > 0 { ",{" } else { "{" });
            if keyed {
                out.push_str("\"key\":");
                self.key.write_json(k, out)?;
                out.push(',');
            }
            out.push_str("\"value\":");
            match (per_cpu_map, per_cpu) {
                (false, _) => self.value.write_json(v, out)?,
                (true, Some(how)) => {
                    out.push_str(&self.value.aggregate(v, ncpus, how)?.to_string())
                }
                (true, None) => self.value.write_json_per_cpu(v, ncpus, out)?,
            }
            out.push('}');
        }
        out.push(']');
        Ok(())
    }
}
