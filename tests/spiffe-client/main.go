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
// authorities' key ids, the sequence and the refresh hint. Exit status 1 on any error,
// with the error on stderr.
package main

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"crypto/x509"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
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
	default:
		fail(fmt.Errorf("unknown command %q (fetch-bundle)", os.Args[1]))
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
