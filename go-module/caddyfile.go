package ztpolicy

import (
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("zt_policy", parseCaddyfile)
	// Decide before anything is proxied.
	httpcaddyfile.RegisterDirectiveOrder("zt_policy", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var z Handler
	err := z.UnmarshalCaddyfile(h.Dispenser)
	return &z, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	zt_policy [<policy_file>] {
//	    policy_file     <path>
//	    jwks_file       <path>
//	    identity_header <name>
//	    rule_header     <name>
//	    strip_headers   <name...>
//	    issuer          <url>
//	    audience        <aud...>
//	    jwks_refresh    <duration>
//	    jwks_min_interval <duration>
//	    idp_ca_file     <path>
//	}
//
// Each option may be given once; the policy file either as the argument or as
// policy_file. The JSON config uses the same names.
func (z *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	seen := map[string]bool{}
	if d.NextArg() {
		z.PolicyFile = d.Val()
		seen["policy_file"] = true
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		if seen[d.Val()] {
			return d.Errf("zt_policy option '%s' is given twice (the policy file counts once, as argument or as policy_file)", d.Val())
		}
		seen[d.Val()] = true
		switch d.Val() {
		case "policy_file":
			if !d.AllArgs(&z.PolicyFile) {
				return d.ArgErr()
			}
		case "jwks_file":
			if !d.AllArgs(&z.JWKSFile) {
				return d.ArgErr()
			}
		case "identity_header":
			if !d.AllArgs(&z.IdentityHeader) {
				return d.ArgErr()
			}
		case "rule_header":
			if !d.AllArgs(&z.RuleHeader) {
				return d.ArgErr()
			}
		case "strip_headers":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			z.StripHeaders = append(z.StripHeaders, args...)
		case "issuer":
			if !d.AllArgs(&z.Issuer) {
				return d.ArgErr()
			}
		case "audience":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			z.Audience = append(z.Audience, args...)
		case "jwks_refresh", "jwks_min_interval":
			opt := d.Val()
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("%s: %q is not a positive duration", opt, v)
			}
			if opt == "jwks_refresh" {
				z.JWKSRefresh = caddy.Duration(dur)
			} else {
				z.JWKSMinInterval = caddy.Duration(dur)
			}
		case "idp_ca_file":
			if !d.AllArgs(&z.IdPCAFile) {
				return d.ArgErr()
			}
		case "stream_usage":
			if !d.AllArgs(&z.StreamUsage) {
				return d.ArgErr()
			}
			if z.StreamUsage != "add" && z.StreamUsage != "off" {
				return d.Errf("stream_usage: %q is not add or off", z.StreamUsage)
			}
		case "limits_store":
			if err := z.unmarshalLimitsStore(d); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized zt_policy option '%s'", d.Val())
		}
	}
	if z.PolicyFile == "" {
		return d.Err("zt_policy needs a policy file: 'zt_policy <relative/path.toml>', or 'policy_file </absolute/path.toml>' " +
			"in its block (Caddy reads a first argument that starts with / as a path matcher)")
	}
	return nil
}

// unmarshalLimitsStore reads
//
//	limits_store <url> {
//		ca_file <pem file>
//		timeout <duration>
//		on_failure local|deny|allow
//	}
func (z *Handler) unmarshalLimitsStore(d *caddyfile.Dispenser) error {
	if z.LimitsStore != nil {
		return d.Err("limits_store given twice")
	}
	s := &LimitsStore{}
	if !d.NextArg() {
		return d.Err("limits_store needs a URL: limits_store redis://host:6379/0")
	}
	s.URL = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "ca_file":
			if !d.AllArgs(&s.CAFile) {
				return d.ArgErr()
			}
		case "timeout":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur < time.Millisecond || dur > 10*time.Second {
				return d.Errf("limits_store timeout: %q is not a duration between 1ms and 10s", v)
			}
			s.Timeout = caddy.Duration(dur)
		case "on_failure":
			if !d.AllArgs(&s.OnFailure) {
				return d.ArgErr()
			}
			if _, ok := engine.OnFailure[s.OnFailure]; !ok {
				return d.Errf("limits_store on_failure: %q is not local, deny or allow", s.OnFailure)
			}
		default:
			return d.Errf("unrecognized limits_store option '%s'", opt)
		}
	}
	z.LimitsStore = s
	return nil
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)
