//! The kernels of the matrix: Debian's own builds of the kernels users' nodes run, the newest of
//! each series in the archive, extracted (not installed as boot kernels) under [`KERNELS_DIR`].
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, command};

/// Where setup extracts the kernel packages. Not under /tmp or /var/tmp: virtme-ng mounts fresh
/// tmpfs there in the guest, and the guest's `/lib/modules/RELEASE` links into this directory.
pub const KERNELS_DIR: &str = "/opt/limiter-kernels";

/// A series of Debian kernel packages: `PREFIX<n>SUFFIX`, newest `n` wins.
pub struct Series {
    /// What users run it as (README "Kernels").
    pub name: &'static str,
    pub prefix: &'static str,
    pub suffix: &'static str,
}

/// Debian 12's 6.1 (Debian 12, Amazon Linux 2023, Bottlerocket, COS) and Debian's 6.12 LTS
/// (Debian 13, RHEL 10, newer AL2023 and Bottlerocket), as Debian 12 ships them.
pub const MATRIX: &[Series] = &[
    Series {
        name: "Debian 12's 6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
    },
    Series {
        name: "Debian's 6.12 LTS",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64-unsigned",
    },
];

/// A kernel extracted for the matrix.
pub struct Kernel {
    pub series: &'static str,
    /// Its `uname -r`.
    pub release: String,
    /// The package's files, as `dpkg-deb -x` laid them out.
    pub dir: PathBuf,
}

impl Kernel {
    pub fn image(&self) -> PathBuf {
        self.dir
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }
}

impl Series {
    /// The number between prefix and suffix, if `package` is of this series.
    fn number(&self, package: &str) -> Option<u32> {
        package
            .strip_prefix(self.prefix)?
            .strip_suffix(self.suffix)?
            .parse()
            .ok()
    }

    /// The newest package of the series among `names`.
    fn newest<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        names
            .into_iter()
            .filter_map(|name| Some((self.number(name)?, name)))
            .max()
            .map(|(_, name)| name)
    }

    /// The newest package of the series in the archive (apt's lists).
    fn newest_in_archive(&self) -> Result<String> {
        let pattern = format!(
            "^{}[0-9]+{}$",
            regex_escape(self.prefix),
            regex_escape(self.suffix)
        );
        let out =
            cmd::output_quiet(command("apt-cache").args(["search", "--names-only", &pattern]))
                .context("apt-cache search")?;
        let names = out.lines().filter_map(|l| l.split_whitespace().next());
        match self.newest(names) {
            Some(name) => Ok(name.to_string()),
            None => bail!(
                "no package `{}N{}` in apt's lists (run apt-get update)",
                self.prefix,
                self.suffix
            ),
        }
    }

    /// The newest kernel of the series already extracted under [`KERNELS_DIR`].
    pub fn extracted(&self) -> Option<Kernel> {
        let entries = std::fs::read_dir(KERNELS_DIR).ok()?;
        let names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        let package = self.newest(names.iter().map(String::as_str))?;
        kernel_in(self.name, &Path::new(KERNELS_DIR).join(package))
    }

    /// Makes sure the newest kernel of the series is extracted: downloads and unpacks it if not.
    pub fn install(&self) -> Result<Kernel> {
        let package = self.newest_in_archive()?;
        let dir = Path::new(KERNELS_DIR).join(&package);
        if let Some(kernel) = kernel_in(self.name, &dir) {
            println!(
                "setup: kernel matrix: {} {}: already extracted",
                self.name, kernel.release
            );
            return Ok(kernel);
        }
        println!("setup: kernel matrix: {}: extracting {package}", self.name);
        let work = Path::new(KERNELS_DIR).join(".download");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        cmd::run(
            command("apt-get")
                .current_dir(&work)
                .args(["download", &package]),
        )?;
        let deb = std::fs::read_dir(&work)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download {package} left no .deb"))?;
        let unpacked = work.join("root");
        cmd::run(command("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        let modules = unpacked.join("lib/modules");
        let release = single_entry(&modules)?;
        // The guest's modprobe reads modules.dep, which a package leaves to its postinst.
        cmd::run(command("depmod").arg("-b").arg(&unpacked).arg(&release))?;
        std::fs::rename(&unpacked, &dir)
            .with_context(|| format!("moving the kernel to {}", dir.display()))?;
        let _ = std::fs::remove_dir_all(&work);
        kernel_in(self.name, &dir)
            .with_context(|| format!("{} has no boot/vmlinuz-*", dir.display()))
    }
}

/// The kernel extracted in `dir`, if it is whole (its image and its modules' index).
fn kernel_in(series: &'static str, dir: &Path) -> Option<Kernel> {
    let release = single_entry(&dir.join("lib/modules")).ok()?;
    let kernel = Kernel {
        series,
        release,
        dir: dir.to_path_buf(),
    };
    let modules_dep = dir
        .join("lib/modules")
        .join(&kernel.release)
        .join("modules.dep");
    (kernel.image().is_file() && modules_dep.is_file()).then_some(kernel)
}

fn single_entry(dir: &Path) -> Result<String> {
    let mut names = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok());
    match (names.next(), names.next()) {
        (Some(name), None) => Ok(name),
        _ => bail!("{} should hold exactly one kernel release", dir.display()),
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = ".+*?()[]{}|^$\\".contains(c);
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_package_of_each_series_is_chosen() {
        let names = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-57-amd64",
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-6.12.118+deb12-amd64-unsigned",
            "linux-image-6.12.99+deb12-amd64-unsigned",
            "linux-image-6.12.120+deb12-rt-amd64-unsigned",
        ];
        assert_eq!(MATRIX[0].newest(names), Some("linux-image-6.1.0-57-amd64"));
        assert_eq!(
            MATRIX[1].newest(names),
            Some("linux-image-6.12.118+deb12-amd64-unsigned")
        );
        assert_eq!(regex_escape("6.12.+x"), r"6\.12\.\+x");
    }
}
