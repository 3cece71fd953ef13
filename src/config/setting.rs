//! The one declaration of a setting. [`settings!`](crate::settings) wraps a clap `Args`
//! struct: each field's clap attributes give its flag, environment variable, default and help,
//! and an optional `[file section.key]` marker gives its key in the configuration file. From
//! that one declaration come the flag and the variable (clap), the file key the reader accepts
//! and turns into the flag's default (`file::FileSettings`), and the line `config print` shows
//! (`file::effective`). What a value must be to be used is checked once, where the settings
//! are built (`config::pipeline` and its siblings).

use std::path::PathBuf;

use clap::ValueEnum;

/// What a file key holds, so a value of the wrong kind is refused naming its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Text,
    /// A whole number, zero or more.
    Count,
    Flag,
    /// A string, or a list of strings (given to the flag comma-separated).
    List,
}

/// One setting the configuration file can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    /// `[section]` in the file.
    pub section: &'static str,
    pub key: &'static str,
    /// The command-line setting's id (its field name), whose default the file's value becomes.
    pub id: &'static str,
    pub kind: FileKind,
}

/// A setting's value as `config print` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileText {
    /// Written quoted (a TOML string).
    Quoted(String),
    /// Written as it is (a number or a boolean).
    Bare(String),
}

impl FileText {
    /// The text with `f` applied (to hide a secret part of it).
    pub fn map(self, f: impl FnOnce(&str) -> String) -> Self {
        match self {
            FileText::Quoted(t) => FileText::Quoted(f(&t)),
            FileText::Bare(t) => FileText::Bare(f(&t)),
        }
    }
}

/// A setting with its file key and its current value (`None`: not set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSetting {
    pub key: FileKey,
    pub value: Option<FileText>,
}

/// How a setting's type appears in the file.
pub trait FileValue {
    const KIND: FileKind;
    /// The value as `config print` writes it; `None` when it is not set.
    fn file_text(&self) -> Option<FileText>;
}

impl FileValue for String {
    const KIND: FileKind = FileKind::Text;
    fn file_text(&self) -> Option<FileText> {
        Some(FileText::Quoted(self.clone()))
    }
}

impl FileValue for PathBuf {
    const KIND: FileKind = FileKind::Text;
    fn file_text(&self) -> Option<FileText> {
        Some(FileText::Quoted(self.display().to_string()))
    }
}

impl FileValue for Vec<PathBuf> {
    const KIND: FileKind = FileKind::List;
    fn file_text(&self) -> Option<FileText> {
        (!self.is_empty()).then(|| {
            FileText::Quoted(
                self.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
        })
    }
}

impl FileValue for bool {
    const KIND: FileKind = FileKind::Flag;
    fn file_text(&self) -> Option<FileText> {
        Some(FileText::Bare(self.to_string()))
    }
}

impl<T: FileValue> FileValue for Option<T> {
    const KIND: FileKind = T::KIND;
    fn file_text(&self) -> Option<FileText> {
        self.as_ref().and_then(FileValue::file_text)
    }
}

macro_rules! counts {
    ($($t:ty),*) => {$(
        impl FileValue for $t {
            const KIND: FileKind = FileKind::Count;
            fn file_text(&self) -> Option<FileText> {
                Some(FileText::Bare(self.to_string()))
            }
        }
    )*};
}
counts!(usize, u64, u32);

macro_rules! value_enums {
    ($($t:ty),*) => {$(
        impl FileValue for $t {
            const KIND: FileKind = FileKind::Text;
            fn file_text(&self) -> Option<FileText> {
                self.to_possible_value()
                    .map(|v| FileText::Quoted(v.get_name().to_owned()))
            }
        }
    )*};
}
value_enums!(
    crate::sqs::Protocol,
    crate::mask::MaskMode,
    crate::telemetry::LogFormat
);

/// Declares a group of settings: a clap `Args` (or `Parser`) struct whose fields may carry a
/// `[file section.key]` marker after their attributes (`[file section.key, redacted]` for a
/// URL whose password `config print` hides). Adds `FILE_KEYS` (the group's file keys) and
/// `file_settings()` (their current values) to the struct.
#[macro_export]
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $([file $section:ident . $key:ident $(, $redacted:ident)?])?
                pub $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[$field_meta])*
                pub $field: $ty,
            )*
        }

        impl $name {
            /// The settings of this group the configuration file can hold.
            pub const FILE_KEYS: &'static [$crate::config::setting::FileKey] = &[
                $($(
                    $crate::config::setting::FileKey {
                        section: stringify!($section),
                        key: stringify!($key),
                        id: stringify!($field),
                        kind: <$ty as $crate::config::setting::FileValue>::KIND,
                    },
                )?)*
            ];

            /// This group's file settings with their current values, in declaration order.
            pub fn file_settings(&self) -> Vec<$crate::config::setting::FileSetting> {
                let values: Vec<Option<$crate::config::setting::FileText>> = vec![
                    $($( $crate::settings!(@text self.$field $(, $redacted)?), )?)*
                ];
                Self::FILE_KEYS
                    .iter()
                    .copied()
                    .zip(values)
                    .map(|(key, value)| $crate::config::setting::FileSetting { key, value })
                    .collect()
            }
        }
    };
    (@text $value:expr) => {
        $crate::config::setting::FileValue::file_text(&$value)
    };
    (@text $value:expr, redacted) => {
        $crate::config::setting::FileValue::file_text(&$value)
            .map(|t| t.map($crate::config::file::redact_password))
    };
}
