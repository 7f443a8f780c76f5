// Command spiffe-client is the go-spiffe v2 peer of Federator's tests: a third-party
// SPIFFE implementation fetching bundles from Federator's bundle endpoint the way a
// SPIRE server does. It is a test component, not part of the product.
//
//	spiffe-client fetch-bundle -url https://127.0.0.1:8443/bundles/a.test -trust-domain a.test \
//	    -profile https_web -roots web-ca.pem
//	spiffe-client fetch-bundle -url ... -trust-domain a.test -profile https_spiffe \
//	    -endpoint-id spiffe://federation.test/replica/1 -endpoint-bundle federation-ca.pem
//
// It prints one JSON object: the trust domain, the X.509 authorities (PEM), the JWT
// authorities' key ids, the sequence and the refresh hint.
//
//	spiffe-client mtls-serve -workload-api unix:///run/spire/agent.sock -listen 127.0.0.1:9000 \
//	    -authorize spiffe://a.test/client
//	spiffe-client mtls-call -workload-api unix:///run/spire/agent.sock -addr 127.0.0.1:9000 \
//	    -authorize spiffe://b.test/server
//
// mtls-serve answers each mTLS connection whose client is the authorized SPIFFE ID with
// one line naming both peers, until killed; it prints "listening" once it has an SVID.
// mtls-call connects with go-spiffe's tlsconfig.MTLSClientConfig, authorizing the
// server's ID, and prints the server's line, then "issuer <hex>": the authority key id of
// the server's SVID. Both take their SVID and bundles (federated
// ones included) from the Workload API. Exit status 1 on any error, with the error on
// stderr.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"time"

	"crypto/x509"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type fetched struct {
	TrustDomain        string   `json:"trust_domain"`
	X509Authorities    []string `json:"x509_authorities"`
	JWTKeyIDs          []string `json:"jwt_key_ids"`
	Sequence           *uint64  `json:"sequence"`
	RefreshHintSeconds *int64   `json:"refresh_hint_seconds"`
}

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: spiffe-client fetch-bundle [flags]"))
	}
	switch os.Args[1] {
	case "fetch-bundle":
		fail(fetchBundle(os.Args[2:]))
	case "mtls-serve":
		fail(mtlsServe(os.Args[2:]))
	case "mtls-call":
		fail(mtlsCall(os.Args[2:]))
	default:
		fail(fmt.Errorf("unknown command %q (fetch-bundle, mtls-serve, mtls-call)", os.Args[1]))
	}
}

func fail(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "spiffe-client:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func fetchBundle(args []string) error {
	flags := flag.NewFlagSet("fetch-bundle", flag.ContinueOnError)
	url := flags.String("url", "", "bundle endpoint URL of the trust domain's bundle")
	td := flags.String("trust-domain", "", "the trust domain whose bundle is fetched")
	profile := flags.String("profile", "https_web", "https_web or https_spiffe")
	roots := flags.String("roots", "", "https_web: PEM file of the web PKI roots to trust")
	endpointID := flags.String("endpoint-id", "", "https_spiffe: the endpoint's SPIFFE ID")
	endpointBundle := flags.String("endpoint-bundle", "", "https_spiffe: PEM bundle of the endpoint's trust domain")
	timeout := flags.Duration("timeout", 10*time.Second, "give up after this long")
	if err := flags.Parse(args); err != nil {
		return err
	}
	trustDomain, err := spiffeid.TrustDomainFromString(*td)
	if err != nil {
		return fmt.Errorf("-trust-domain: %w", err)
	}
	var option federation.FetchOption
	switch *profile {
	case "https_web":
		pool := x509.NewCertPool()
		pemBytes, err := os.ReadFile(*roots)
		if err != nil {
			return fmt.Errorf("-roots: %w", err)
		}
		if !pool.AppendCertsFromPEM(pemBytes) {
			return fmt.Errorf("-roots: no certificate in %s", *roots)
		}
		option = federation.WithWebPKIRoots(pool)
	case "https_spiffe":
		id, err := spiffeid.FromString(*endpointID)
		if err != nil {
			return fmt.Errorf("-endpoint-id: %w", err)
		}
		source, err := x509bundle.Load(id.TrustDomain(), *endpointBundle)
		if err != nil {
			return fmt.Errorf("-endpoint-bundle: %w", err)
		}
		option = federation.WithSPIFFEAuth(source, id)
	default:
		return fmt.Errorf("-profile: %q is neither https_web nor https_spiffe", *profile)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	bundle, err := federation.FetchBundle(ctx, trustDomain, *url, option)
	if err != nil {
		return err
	}
	out := fetched{TrustDomain: bundle.TrustDomain().String(), X509Authorities: []string{}, JWTKeyIDs: []string{}}
	for _, authority := range bundle.X509Authorities() {
		block := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: authority.Raw})
		out.X509Authorities = append(out.X509Authorities, string(block))
	}
	for keyID := range bundle.JWTAuthorities() {
		out.JWTKeyIDs = append(out.JWTKeyIDs, keyID)
	}
	sort.Strings(out.JWTKeyIDs)
	if sequence, ok := bundle.SequenceNumber(); ok {
		out.Sequence = &sequence
	}
	if hint, ok := bundle.RefreshHint(); ok {
		seconds := int64(hint / time.Second)
		out.RefreshHintSeconds = &seconds
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// workloadFlags are the flags both mTLS commands take.
type workloadFlags struct {
	address   *string
	authorize *string
	timeout   *time.Duration
}

func newWorkloadFlags(flags *flag.FlagSet) workloadFlags {
	return workloadFlags{
		address:   flags.String("workload-api", "", "the Workload API address (unix:///path)"),
		authorize: flags.String("authorize", "", "the peer's SPIFFE ID"),
		timeout:   flags.Duration("timeout", 30*time.Second, "give up after this long"),
	}
}

// source returns the X.509 source of the Workload API and the peer ID to authorize.
func (w workloadFlags) source(ctx context.Context) (*workloadapi.X509Source, spiffeid.ID, error) {
	peer, err := spiffeid.FromString(*w.authorize)
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("-authorize: %w", err)
	}
	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(*w.address)))
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("workload API %s: %w", *w.address, err)
	}
	return source, peer, nil
}

func ownID(source *workloadapi.X509Source) string {
	svid, err := source.GetX509SVID()
	if err != nil {
		return "?"
	}
	return svid.ID.String()
}

func mtlsServe(args []string) error {
	flags := flag.NewFlagSet("mtls-serve", flag.ContinueOnError)
	listen := flags.String("listen", "127.0.0.1:0", "address to listen on")
	w := newWorkloadFlags(flags)
	if err := flags.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *w.timeout)
	source, client, err := w.source(ctx)
	cancel()
	if err != nil {
		return err
	}
	defer source.Close()
	listener, err := tls.Listen("tcp", *listen, tlsconfig.MTLSServerConfig(source, source, tlsconfig.AuthorizeID(client)))
	if err != nil {
		return err
	}
	fmt.Println("listening", listener.Addr().String(), "as", ownID(source))
	for {
		conn, err := listener.Accept()
		if err != nil {
			return err
		}
		go func(conn net.Conn) {
			defer conn.Close()
			tlsConn := conn.(*tls.Conn)
			if err := tlsConn.Handshake(); err != nil {
				fmt.Fprintln(os.Stderr, "handshake refused:", err)
				return
			}
			peer := "?"
			if state := tlsConn.ConnectionState(); len(state.PeerCertificates) > 0 {
				if id, err := x509svid.IDFromCert(state.PeerCertificates[0]); err == nil {
					peer = id.String()
				}
			}
			if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
				return
			}
			fmt.Fprintf(conn, "hello %s from %s\n", peer, ownID(source))
		}(conn)
	}
}

func mtlsCall(args []string) error {
	flags := flag.NewFlagSet("mtls-call", flag.ContinueOnError)
	addr := flags.String("addr", "", "the server's address")
	w := newWorkloadFlags(flags)
	if err := flags.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *w.timeout)
	defer cancel()
	source, server, err := w.source(ctx)
	if err != nil {
		return err
	}
	defer source.Close()
	dialer := tls.Dialer{Config: tlsconfig.MTLSClientConfig(source, source, tlsconfig.AuthorizeID(server))}
	conn, err := dialer.DialContext(ctx, "tcp", *addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "hello\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("no answer: %w", err)
	}
	fmt.Print(line)
	// Which authority signed the server's SVID (its authority key id), to follow a
	// rotation of the server's CA.
	if state := conn.(*tls.Conn).ConnectionState(); len(state.PeerCertificates) > 0 {
		fmt.Printf("issuer %s\n", hex.EncodeToString(state.PeerCertificates[0].AuthorityKeyId))
	}
	return nil
}
