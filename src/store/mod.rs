//! TEMPORARY stub until the store branch lands.
pub mod deliveries;
pub mod people;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Sqlx(#[from] sqlx::Error),
}
pub type Result<T, E = Error> = std::result::Result<T, E>;
pub struct Store { pool: sqlx::SqlitePool }
impl Store {
    pub async fn open(_p: &std::path::Path) -> Result<Store> { unimplemented!() }
    pub async fn ping(&self) -> Result<()> { Ok(()) }
    pub fn pool(&self) -> &sqlx::SqlitePool { &self.pool }
}
