//! `datafusion::arrow` for the fuzz targets: Arrow, re-exported.
pub use arrow;
