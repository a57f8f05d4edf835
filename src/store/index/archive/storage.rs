//! Where the archive's files go: an `object_store` store from `--archive-url` (a local directory
//! by default, `s3://`, `gs://` or `az://` in deployments, each configured from its provider's
//! usual environment: AWS_*, GOOGLE_*, AZURE_*), rooted at the URL's prefix.

use std::{path::Path as FsPath, sync::Arc};

use object_store::{
    ObjectStore, aws::AmazonS3Builder, azure::MicrosoftAzureBuilder,
    gcp::GoogleCloudStorageBuilder, local::LocalFileSystem, prefix::PrefixStore,
};
use url::Url;

/// The archive's location, as configured: a URL, or a local directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveLocation {
    Directory(std::path::PathBuf),
    Url(Url),
}

impl ArchiveLocation {
    /// Parses `--archive-url`: `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`,
    /// `file:///path`, or a plain path.
    pub fn parse(value: &str) -> Result<ArchiveLocation, String> {
        if !value.contains("://") {
            return Ok(ArchiveLocation::Directory(value.into()));
        }
        let url = Url::parse(value).map_err(|error| {
            format!("{value:?} is not a URL ({error}); use s3://bucket/prefix, gs://, az:// or a directory")
        })?;
        match url.scheme() {
            "file" => url
                .to_file_path()
                .map(ArchiveLocation::Directory)
                .map_err(|()| format!("{value:?} names no local directory")),
            "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" => {
                if url.host_str().unwrap_or_default().is_empty() {
                    return Err(format!(
                        "{value:?} names no bucket: use {}://BUCKET/prefix",
                        url.scheme()
                    ));
                }
                Ok(ArchiveLocation::Url(url))
            }
            other => Err(format!(
                "the archive URL's scheme {other:?} is not supported: use s3://, gs://, az:// or a directory"
            )),
        }
    }

    /// Opens the store, rooted at the location's prefix (a directory is created when missing).
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, String> {
        match self {
            ArchiveLocation::Directory(directory) => local(directory),
            ArchiveLocation::Url(url) => remote(url),
        }
    }
}

impl std::fmt::Display for ArchiveLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveLocation::Directory(directory) => write!(f, "{}", directory.display()),
            ArchiveLocation::Url(url) => write!(f, "{url}"),
        }
    }
}

fn local(directory: &FsPath) -> Result<Arc<dyn ObjectStore>, String> {
    std::fs::create_dir_all(directory).map_err(|error| {
        format!(
            "cannot create the archive directory {}: {error}",
            directory.display()
        )
    })?;
    let store = LocalFileSystem::new_with_prefix(directory)
        .map_err(|error| {
            format!(
                "cannot open the archive directory {}: {error}",
                directory.display()
            )
        })?
        .with_automatic_cleanup(true);
    Ok(Arc::new(store))
}

fn remote(url: &Url) -> Result<Arc<dyn ObjectStore>, String> {
    let failed = |error: object_store::Error| format!("cannot open the archive at {url}: {error}");
    let prefix = url.path().trim_matches('/').to_owned();
    let root = url[..url::Position::BeforePath].to_owned();
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => Arc::new(
            AmazonS3Builder::from_env()
                .with_url(&root)
                .build()
                .map_err(failed)?,
        ),
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(&root)
                .build()
                .map_err(failed)?,
        ),
        _ => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(&root)
                .build()
                .map_err(failed)?,
        ),
    };
    if prefix.is_empty() {
        return Ok(store);
    }
    Ok(Arc::new(PrefixStore::new(store, prefix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_or_say_what_to_write() {
        assert_eq!(
            ArchiveLocation::parse("/var/lib/dbtrail/archive"),
            Ok(ArchiveLocation::Directory(
                "/var/lib/dbtrail/archive".into()
            ))
        );
        assert_eq!(
            ArchiveLocation::parse("file:///tmp/a"),
            Ok(ArchiveLocation::Directory("/tmp/a".into()))
        );
        assert!(matches!(
            ArchiveLocation::parse("s3://bucket/prefix"),
            Ok(ArchiveLocation::Url(_))
        ));
        let error = ArchiveLocation::parse("ftp://host/x").unwrap_err();
        assert!(error.contains("s3://"), "{error}");
        let error = ArchiveLocation::parse("s3:///prefix").unwrap_err();
        assert!(error.contains("names no bucket"), "{error}");
    }
}
