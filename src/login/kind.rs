//! The login pipeline as a message kind (`kind::MessageKind`): the analysts' seven columns of
//! `public.user_logins`, made by the mapping engine from the built-in mapping
//! ([`BUILT_IN`], `examples/mappings/login.toml` compiled in) under the run's two mask modes.
//! One engine runs every message: this file says only which mapping, which modes, and which
//! columns the table has.

use super::MaskModes;
use crate::keys::MaskKey;
use crate::kind::{Message, MessageKind, TableWrite, Transformed};
use crate::mapping::{Mapper, Mapping};

/// The built-in mapping: the login table's columns, checks, masks and reason codes, the ones
/// the login pipeline always had (`login/golden.rs` holds it to them, byte for byte).
pub const BUILT_IN: &str = include_str!("../../examples/mappings/login.toml");

/// The table's columns, in the order rows are encoded (the built-in mapping's).
pub const COLUMNS: [&str; 7] = [
    "user_id",
    "device_type",
    "masked_ip",
    "masked_device_id",
    "locale",
    "app_version",
    "create_date",
];

/// Logins, masked under one key and the run's modes.
pub struct LoginKind {
    mapper: Mapper,
}

impl LoginKind {
    /// The built-in mapping under `key`, its address masked in `modes.ip` and its device id
    /// in `modes.device_id` (configuration refuses an ipcrypt mode for the device id).
    pub fn new(key: &MaskKey, modes: MaskModes) -> Self {
        let mut mapping = Mapping::parse(BUILT_IN).expect("the built-in mapping is valid");
        for (column, mode) in [
            ("masked_ip", modes.ip),
            ("masked_device_id", modes.device_id),
        ] {
            assert!(
                mapping.set_mask_mode(column, mode),
                "{mode} does not fit the login's {column}"
            );
        }
        // Unknown fields are counted, never named: the login pipeline never logged a name,
        // and a login's extra keys could be data.
        Self {
            mapper: Mapper::new(mapping, key).counting_unknown_only(),
        }
    }

    /// The engine it runs (what the tests read rows through).
    pub fn mapper(&self) -> &Mapper {
        &self.mapper
    }
}

impl MessageKind for LoginKind {
    fn name(&self) -> &str {
        "login"
    }

    fn writes(&self) -> Vec<TableWrite> {
        vec![TableWrite {
            columns: COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
            ..Default::default()
        }]
    }

    fn transform(&self, message: &Message<'_>) -> Transformed {
        // The body size is checked by the pipeline before any kind sees a body.
        self.mapper.transform(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The columns the table is written with are the built-in mapping's, in its order.
    #[test]
    fn the_columns_are_the_built_in_mappings() {
        let mapping = Mapping::parse(BUILT_IN).unwrap();
        let names: Vec<&str> = mapping.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, COLUMNS);
    }
}
