// loadgen drives one HTTPS endpoint over keep-alive mTLS connections and prints a JSON
// summary: requests, errors, statuses, requests/s, latency percentiles.
//
// Identities: with -sign-key, each request carries a bearer token it signs itself
// (RS256, kid -kid) for one of -identities subjects, so limits see that many callers;
// with -token, every request carries that token.
//
// Load: closed loop by default (-c connections, each sending as soon as it has its
// answer: the most a setup can serve); with -rate, open loop at a fixed rate (the
// latency a setup adds at a given load). With -fresh every request opens a new
// connection; with -mint-certs each presents a certificate the server has not seen.
package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	url := flag.String("url", "", "target URL")
	method := flag.String("method", "POST", "method")
	body := flag.String("body", "", "request body (JSON)")
	bodyFile := flag.String("body-file", "", "read the request body from this file (for bodies too long for an argument)")
	connect := flag.String("connect", "", "host:port to dial instead of the URL's (SNI stays the URL's host)")
	ca := flag.String("ca", "", "CA file for the server")
	cert := flag.String("cert", "", "client certificate")
	key := flag.String("key", "", "client key")
	conns := flag.Int("c", 16, "connections (one worker each)")
	duration := flag.Duration("d", 10*time.Second, "how long to run")
	requests := flag.Int("n", 0, "stop after this many requests (0: run for -d)")
	token := flag.String("token", "", "bearer token for every request")
	signKey := flag.String("sign-key", "", "PEM RSA key to sign per-identity tokens with")
	kid := flag.String("kid", "", "kid of -sign-key")
	issuer := flag.String("iss", "", "iss of signed tokens")
	audience := flag.String("aud", "", "aud of signed tokens")
	identities := flag.Int("identities", 1, "distinct token subjects, cycled")
	var headers headerFlags
	flag.Var(&headers, "header", "a request header, Name: value (repeatable)")
	rate := flag.Float64("rate", 0, "open loop: start requests at this fixed rate per second "+
		"(latency counts from each request's scheduled start); 0: closed loop, each "+
		"connection sends its next request when the previous one is answered")
	fresh := flag.Bool("fresh", false, "a new connection (full TLS handshake, no resumption) for every request")
	mint := flag.Int("mint-certs", 0, "with -fresh: present a new client certificate on each connection, "+
		"cycling through this many, minted at start and signed by -ca-key")
	caKey := flag.String("ca-key", "", "key of the -ca CA, for -mint-certs")
	flag.Parse()
	if *bodyFile != "" {
		b, err := os.ReadFile(*bodyFile)
		check(err)
		*body = string(b)
	}
	payload := []byte(*body)

	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, ClientSessionCache: tls.NewLRUClientSessionCache(256)}
	if *ca != "" {
		pool := x509.NewCertPool()
		b, err := os.ReadFile(*ca)
		check(err)
		pool.AppendCertsFromPEM(b)
		tlsCfg.RootCAs = pool
	}
	if *cert != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		check(err)
		tlsCfg.Certificates = []tls.Certificate{pair}
	}
	if *fresh {
		// Every handshake is a full one, so the server sees the certificate each time.
		tlsCfg.ClientSessionCache = nil
	}
	if *mint > 0 {
		certs := mintClientCerts(*ca, *caKey, *mint)
		var n atomic.Int64
		tlsCfg.Certificates = nil
		tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &certs[int(n.Add(1)-1)%len(certs)], nil
		}
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	transport := &http.Transport{
		TLSClientConfig: tlsCfg, MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns, ForceAttemptHTTP2: false,
		DisableKeepAlives: *fresh,
	}
	if *connect != "" {
		transport.Dial = func(network, addr string) (net.Conn, error) { return dialer.Dial(network, *connect) }
	}
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}

	var tokens []string
	switch {
	case *signKey != "":
		k := loadKey(*signKey)
		for i := 0; i < *identities; i++ {
			tokens = append(tokens, sign(k, *kid, map[string]any{"iss": *issuer, "aud": *audience,
				"sub": fmt.Sprintf("bench-%d", i), "groups": []string{"ml-users"},
				"exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix()}))
		}
	case *token != "":
		tokens = []string{*token}
	}

	if *rate > 0 {
		// Open every connection (TLS handshake with the client certificate) before
		// the clock starts, so the first requests do not measure handshakes.
		var warm sync.WaitGroup
		for w := 0; w < *conns; w++ {
			warm.Add(1)
			go func() {
				defer warm.Done()
				req, _ := http.NewRequest("GET", *url, nil)
				if resp, err := client.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}()
		}
		warm.Wait()
	}

	var next atomic.Int64
	var errors atomic.Int64
	statuses := sync.Map{}
	lat := make([][]time.Duration, *conns)
	first := make([][]time.Duration, *conns)
	deadline := time.Now().Add(*duration)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if (*requests > 0 && i >= int64(*requests)) || (*requests == 0 && time.Now().After(deadline)) {
					return
				}
				var scheduled time.Time
				if *rate > 0 {
					// Request i is due at start + i/rate; a late request is measured
					// from when it was due, so a stall shows in the percentiles
					// instead of silently lowering the load.
					scheduled = start.Add(time.Duration(float64(i) / *rate * float64(time.Second)))
					if scheduled.After(deadline) && *requests == 0 {
						return
					}
					time.Sleep(time.Until(scheduled))
				}
				req, _ := http.NewRequest(*method, *url, bytes.NewReader(payload))
				if *body != "" {
					req.Header.Set("Content-Type", "application/json")
				}
				if len(tokens) > 0 {
					req.Header.Set("Authorization", "Bearer "+tokens[int(i)%len(tokens)])
				}
				for _, h := range headers {
					req.Header.Set(h[0], h[1])
				}
				t0 := time.Now()
				if *rate > 0 {
					t0 = scheduled
				}
				resp, err := client.Do(req)
				if err != nil {
					errors.Add(1)
					continue
				}
				// Time to first byte: the response's headers and its first body byte.
				var one [1]byte
				_, _ = io.ReadFull(resp.Body, one[:])
				first[w] = append(first[w], time.Since(t0))
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat[w] = append(lat[w], time.Since(t0))
				v, _ := statuses.LoadOrStore(resp.StatusCode, new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	flat := func(per [][]time.Duration) []time.Duration {
		var all []time.Duration
		for _, l := range per {
			all = append(all, l...)
		}
		sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
		return all
	}
	all, firsts := flat(lat), flat(first)
	pctOf := func(xs []time.Duration, p float64) float64 {
		if len(xs) == 0 {
			return 0
		}
		return float64(xs[int(p*float64(len(xs)-1))].Microseconds())
	}
	pct := func(p float64) float64 { return pctOf(all, p) }
	codes := map[string]int64{}
	statuses.Range(func(k, v any) bool {
		codes[fmt.Sprint(k)] = v.(*atomic.Int64).Load()
		return true
	})
	out := map[string]any{
		"requests": len(all), "errors": errors.Load(), "statuses": codes, "seconds": elapsed.Seconds(),
		"rps": float64(len(all)) / elapsed.Seconds(), "p50_us": pct(0.50), "p90_us": pct(0.90),
		"p99_us": pct(0.99), "max_us": pct(1.0),
		"ttfb_p50_us": pctOf(firsts, 0.50), "ttfb_p99_us": pctOf(firsts, 0.99),
	}
	check(json.NewEncoder(os.Stdout).Encode(out))
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

// loadKey reads an RSA or P-256 private key (PKCS#8, PKCS#1 or SEC 1).
func loadKey(path string) crypto.Signer {
	b, err := os.ReadFile(path)
	check(err)
	block, _ := pem.Decode(b)
	if block == nil {
		log.Fatalf("%s: no PEM", path)
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		return k.(crypto.Signer)
	}
	if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		return k
	}
	k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	check(err)
	return k
}

// sign makes a JWT: RS256 for an RSA key, ES256 for a P-256 key.
func sign(k crypto.Signer, kid string, claims map[string]any) string {
	enc := base64.RawURLEncoding.EncodeToString
	alg := "RS256"
	if _, ok := k.(*ecdsa.PrivateKey); ok {
		alg = "ES256"
	}
	h, _ := json.Marshal(map[string]string{"alg": alg, "typ": "JWT", "kid": kid})
	p, _ := json.Marshal(claims)
	signing := enc(h) + "." + enc(p)
	sum := sha256.Sum256([]byte(signing))
	var sig []byte
	var err error
	switch key := k.(type) {
	case *rsa.PrivateKey:
		sig, err = rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	case *ecdsa.PrivateKey:
		var r, s interface{ FillBytes([]byte) []byte }
		rr, ss, e := ecdsa.Sign(rand.Reader, key, sum[:])
		r, s, err = rr, ss, e
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	default:
		log.Fatalf("unsupported key %T", k)
	}
	check(err)
	return signing + "." + enc(sig)
}

// mintClientCerts makes n device certificates (P-256, clientAuth, O=Example Corp,
// OU=ml-users, CN=bench-device-i, SAN bench-device-i@example.com) signed by the CA.
func mintClientCerts(caPath, caKeyPath string, n int) []tls.Certificate {
	b, err := os.ReadFile(caPath)
	check(err)
	block, _ := pem.Decode(b)
	if block == nil {
		log.Fatalf("%s: no PEM", caPath)
	}
	caCert, err := x509.ParseCertificate(block.Bytes)
	check(err)
	caSigner := loadKey(caKeyPath)
	out := make([]tls.Certificate, n)
	for i := range out {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		check(err)
		serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
		check(err)
		name := fmt.Sprintf("bench-device-%d", i)
		tmpl := &x509.Certificate{
			SerialNumber:   serial,
			Subject:        pkix.Name{Organization: []string{"Example Corp"}, OrganizationalUnit: []string{"ml-users"}, CommonName: name},
			EmailAddresses: []string{name + "@example.com"},
			NotBefore:      time.Now().Add(-time.Hour),
			NotAfter:       time.Now().Add(24 * time.Hour),
			KeyUsage:       x509.KeyUsageDigitalSignature,
			ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caSigner)
		check(err)
		out[i] = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	return out
}

// headerFlags collects -header "Name: value" flags.
type headerFlags [][2]string

func (h *headerFlags) String() string { return fmt.Sprint(*h) }

func (h *headerFlags) Set(v string) error {
	name, value, ok := strings.Cut(v, ":")
	if !ok {
		return fmt.Errorf("-header %q: want Name: value", v)
	}
	*h = append(*h, [2]string{strings.TrimSpace(name), strings.TrimSpace(value)})
	return nil
}
