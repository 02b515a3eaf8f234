//! Names of the files in a store's directory (see the module doc for what each holds).

/// Name of the compaction commit manifest.
pub(super) const MANIFEST_NAME: &str = "COMPACT";

pub(super) fn segment_name(id: u32) -> String {
    format!("{id:010}.seg")
}
pub(super) fn hint_name(id: u32) -> String {
    format!("{id:010}.hint")
}
pub(super) fn compact_name(id: u32) -> String {
    format!("{id:010}.compact")
}
pub(super) fn parse_id(name: &str, suffix: &str) -> Option<u32> {
    let stem = name.strip_suffix(suffix)?;
    if stem.len() != 10 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}
