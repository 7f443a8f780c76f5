//! Who may call the admin API: any caller on the replica's admin socket (trusted by
//! file permission), over mTLS only the federation's admin identity, verified against
//! the federation CA before the request body is decoded. Refusals go to the audit trail
//! under the caller's verified identity or its address.

use std::time::Instant;

use tonic::{Request, Status};

use super::AdminService;
use super::calls::record_caller;
use crate::identity::verify_client_svid;

/// How long a verified admin chain is trusted without verifying it again (expiry is
/// still noticed within this time).
const ADMIN_VERIFICATION_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Marks a request the interceptor authorized: its handler does not check again.
/// Extensions are the server's own (nothing on the wire sets them).
#[derive(Clone, Copy, Debug)]
struct Authorized;

impl AdminService {
    /// Refuses callers that are neither on the admin socket nor the admin identity. The
    /// API port defers certificate trust to the request (agents are verified against
    /// their own trust domain's bundle), so here the chain is verified against the
    /// federation CA.
    pub(super) fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if request.extensions().get::<Authorized>().is_some() {
            // Checked by the interceptor (which recorded the caller) before decoding.
            return Ok(());
        }
        if request.extensions().get::<tonic::transport::server::UdsConnectInfo>().is_some() {
            record_caller("admin socket");
            return Ok(());
        }
        let chain = federator_raft::tls::peer_chain(request);
        let anonymous = || {
            crate::server::refusals::anonymous(
                federator_raft::tls::connect_info(request).and_then(|info| info.remote_addr),
            )
        };
        // Checked before the body is decoded (see `intercept`): which call it was is not
        // known yet.
        let action = "admin_api";
        if chain.is_empty() {
            record_caller(&anonymous());
            let status = Status::unauthenticated(
                "admin API: a client certificate with the admin SPIFFE ID is required",
            );
            self.refusals.record(&anonymous(), action, "", status.message());
            return Err(status);
        }
        let fingerprint: [u8; 32] = {
            use sha2::Digest as _;
            let mut hasher = sha2::Sha256::new();
            for cert in chain {
                hasher.update(cert);
            }
            hasher.finalize().into()
        };
        let cached = self
            .verified
            .lock()
            .ok()
            .and_then(|v| v.get(&fingerprint).copied())
            .is_some_and(|at| at.elapsed() < ADMIN_VERIFICATION_TTL);
        if cached {
            record_caller(&self.admin_id);
            return Ok(());
        }
        let roots: Vec<&[u8]> = self.ca_roots.iter().map(Vec::as_slice).collect();
        let id = verify_client_svid(chain, &roots, crate::clock::unix_now()).map_err(|e| {
            let status = Status::permission_denied(format!(
                "admin API: the client certificate is not the federation's: {e}"
            ));
            record_caller(&anonymous());
            self.refusals.record(&anonymous(), action, "", status.message());
            status
        })?;
        record_caller(&id.to_string());
        if id.to_string() == self.admin_id {
            if let Ok(mut verified) = self.verified.lock() {
                if verified.len() > 1024 {
                    verified.clear();
                }
                verified.insert(fingerprint, Instant::now());
            }
            Ok(())
        } else {
            let status = Status::permission_denied(format!(
                "admin API: caller {id} is not the admin identity {}",
                self.admin_id
            ));
            // Verified against the federation CA: a replica's identity, for instance.
            self.refusals.record(&id.to_string(), action, "", status.message());
            Err(status)
        }
    }

    /// Checks the caller before the request body is decoded (a tonic interceptor): an
    /// unverified caller costs no decoding of a message of up to the admin API's limit.
    ///
    /// # Errors
    /// The caller is not the admin identity (and not on the admin socket).
    pub fn intercept(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        self.authorize(&request)?;
        request.extensions_mut().insert(Authorized);
        Ok(request)
    }
}
