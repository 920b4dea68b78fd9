//! Placeholder: the compose snapshot tests live on another branch; this
//! file only lets the test binary build here.
