// goclient drives Tailscale's official Go API client
// (tailscale.com/client/tailscale/v2) against a tailnetd server, for the
// end-to-end test tests/e2e/test_goclient.py. It runs each call once and
// prints one JSON object: for every step its result or the client's error.
// The exit status is 1 if any step failed, so the test reads each step.
//
//	goclient -base-url https://127.0.0.1:PORT -tailnet - -api-key KEY \
//	  -tags tag:server -validate good.hujson -validate bad.hujson
//
// -oauth-id/-oauth-secret use the client's OAuth client-credentials support
// instead of an API key. TLS trusts SSL_CERT_FILE, as Go always does.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	tailscale "tailscale.com/client/tailscale/v2"
)

type files []string

func (f *files) String() string     { return strings.Join(*f, ",") }
func (f *files) Set(v string) error { *f = append(*f, v); return nil }

type step struct {
	Result any    `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`
	Status int    `json:"status,omitempty"` // the HTTP status of an API error
}

func outcome(result any, err error) step {
	if err == nil {
		return step{Result: result}
	}
	s := step{Error: err.Error()}
	if apiErr, ok := err.(tailscale.APIError); ok {
		s.Status = apiErr.Status
	}
	return s
}

func main() {
	baseURL := flag.String("base-url", "", "the server's URL, e.g. https://127.0.0.1:8443")
	tailnet := flag.String("tailnet", "-", "the tailnet in paths")
	apiKey := flag.String("api-key", "", "an API key")
	oauthID := flag.String("oauth-id", "", "an OAuth client id (instead of -api-key)")
	oauthSecret := flag.String("oauth-secret", "", "the OAuth client's secret")
	tags := flag.String("tags", "", "comma-separated tags to set on the first device and on a new key")
	var validate files
	flag.Var(&validate, "validate", "a policy file to validate (repeatable)")
	flag.Parse()

	base, err := url.Parse(*baseURL)
	if err != nil || base.Host == "" {
		fmt.Fprintln(os.Stderr, "goclient: -base-url must be an absolute URL")
		os.Exit(2)
	}
	client := &tailscale.Client{BaseURL: base, Tailnet: *tailnet, APIKey: *apiKey}
	if *oauthID != "" {
		client.Auth = &tailscale.OAuth{ClientID: *oauthID, ClientSecret: *oauthSecret}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	out := map[string]any{}
	failed := false
	record := func(name string, result any, err error) {
		out[name] = outcome(result, err)
		failed = failed || err != nil
	}

	devices, err := client.Devices().List(ctx, tailscale.WithFields(tailscale.IncludeFieldsAll))
	record("listDevices", devices, err)
	if err == nil && len(devices) > 0 {
		id := devices[0].NodeID
		device, err := client.Devices().Get(ctx, id)
		record("getDevice", device, err)
		if *tags != "" {
			err = client.Devices().SetTags(ctx, id, strings.Split(*tags, ","))
			record("setTags", nil, err)
			if err == nil {
				device, err = client.Devices().Get(ctx, id)
				record("getDeviceAfterTags", device, err)
			}
		}
		routes, err := client.Devices().SubnetRoutes(ctx, id)
		record("subnetRoutes", routes, err)
	}

	if *tags != "" {
		var req tailscale.CreateKeyRequest
		req.Capabilities.Devices.Create.Ephemeral = true
		req.Capabilities.Devices.Create.Preauthorized = true
		req.Capabilities.Devices.Create.Tags = strings.Split(*tags, ",")
		req.Description = "made by the Go client"
		key, err := client.Keys().CreateAuthKey(ctx, req)
		record("createKey", key, err)
	}
	keys, err := client.Keys().List(ctx, false)
	record("listKeys", keys, err)

	raw, err := client.PolicyFile().Raw(ctx)
	record("policyRaw", raw, err)
	acl, err := client.PolicyFile().Get(ctx)
	if err == nil {
		record("policy", map[string]any{"acl": acl, "etag": acl.ETag}, nil)
	} else {
		record("policy", nil, err)
	}

	validated := []step{}
	for _, path := range validate {
		text, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "goclient:", err)
			os.Exit(2)
		}
		// A validation failure is an answer, not a broken call: not counted.
		validated = append(validated, outcome("ok", client.PolicyFile().Validate(ctx, string(text))))
	}
	out["validate"] = validated

	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "goclient:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}
