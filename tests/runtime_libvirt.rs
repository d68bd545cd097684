//! The libvirt backend (cargo feature `libvirt`): define, start, console, stop and undefine
//! on libvirt's built-in `test:///default` driver, and on a real `qemu:///system` libvirtd
//! with a tiny diskless KVM domain whose serial console shows the firmware.

mod common;

#[cfg(not(feature = "libvirt"))]
#[test]
fn libvirt_backend_is_built() {
    common::skip("aienv was built without the `libvirt` feature: run `cargo test --features libvirt` (needs Debian's libvirt-dev)");
}

#[cfg(feature = "libvirt")]
mod with_libvirt {
    use std::process::Command;
    use std::time::Duration;

    use awc::ws::{Frame, Message};
    use futures_util::{SinkExt, StreamExt};

    use super::common::runtime::{run, workspace};
    use super::common::{self, TestNode};

    fn virsh(args: &[&str]) -> Option<String> {
        let output = Command::new("virsh")
            .args(["-c", "qemu:///system"])
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    fn domain_of(instance: &str) -> String {
        instance
            .strip_prefix("domain ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{instance}"))
            .to_string()
    }

    #[actix_rt::test]
    async fn test_driver_defines_starts_stops_and_undefines() {
        let node = TestNode::spawn();
        workspace(
            &node,
            "vm",
            &[],
            "guest",
            "schema_version: 1\nruntime: libvirt\nlibvirt: {uri: 'test:///default'}\nresources: {cpus: {min: 1}, memory: {min: 128MiB}}\nrestart: {stop_timeout_seconds: 1}\n",
        )
        .await;
        let admin = node.admin();
        let statuses = run(&admin, "vm").await;
        let status = &statuses[0];
        assert_eq!(status.state, "running", "{status:#?}");
        assert_eq!(status.backend, "libvirt");
        let instance = status.instance.clone().unwrap();
        assert!(instance.ends_with("on test:///default"), "{instance}");
        assert!(domain_of(&instance).starts_with("aienv-"), "{instance}");
        let stopped = admin.stop("vm", None).await.unwrap();
        assert_eq!(stopped[0].state, "stopped", "{stopped:#?}");
        assert_eq!(stopped[0].error, None, "{stopped:#?}");
        // It can run again (the domain was undefined, not left behind).
        let statuses = run(&admin, "vm").await;
        assert_eq!(statuses[0].state, "running", "{statuses:#?}");
        admin.stop("vm", None).await.unwrap();
    }

    #[actix_rt::test]
    async fn qemu_system_domain_boots_with_a_serial_console() {
        if virsh(&["version"]).is_none() {
            common::skip("no libvirtd answers on qemu:///system (Debian: libvirt-daemon-system qemu-system-x86, then `virtlogd -d; libvirtd -d`)");
            return;
        }
        let node = TestNode::spawn();
        workspace(
            &node,
            "kvm",
            &[],
            "guest",
            "schema_version: 1\nruntime: libvirt\nlibvirt: {uri: 'qemu:///system'}\nresources: {cpus: {min: 1}, memory: {min: 64MiB}}\nrestart: {stop_timeout_seconds: 1}\ntools: [{name: console, kind: terminal}]\n",
        )
        .await;
        let admin = node.admin();
        let statuses = run(&admin, "kvm").await;
        let status = &statuses[0];
        assert_eq!(status.state, "running", "{status:#?}");
        let domain = domain_of(status.instance.as_deref().unwrap());
        assert_eq!(virsh(&["domstate", &domain]).as_deref(), Some("running"));
        let xml = virsh(&["dumpxml", &domain]).unwrap();
        assert!(xml.contains("<memory unit='KiB'>65536</memory>"), "{xml}");

        // The serial console: the firmware, failing to boot a diskless VM, says so (again and
        // again: it reboots at once).
        let framed = admin.terminal("kvm", None, 80, 24).await.unwrap();
        let (mut sink, mut stream) = framed.split();
        let mut seen = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(Ok(frame)) = stream.next().await {
                if let Frame::Binary(bytes) | Frame::Text(bytes) = frame {
                    seen.push_str(&String::from_utf8_lossy(&bytes));
                    if seen.contains("SeaBIOS") || seen.contains("No bootable device") {
                        break;
                    }
                }
            }
        })
        .await;
        assert!(
            seen.contains("SeaBIOS") || seen.contains("No bootable device"),
            "console output: {seen:?}"
        );
        let _ = sink.send(Message::Close(None)).await;

        let stopped = admin.stop("kvm", None).await.unwrap();
        assert_eq!(stopped[0].state, "stopped", "{stopped:#?}");
        assert!(
            virsh(&["dominfo", &domain]).is_none(),
            "domain {domain} is undefined"
        );
    }
}
