package peers

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// CA rotation policy. A rotation replaces the cluster CA without ever
// leaving two nodes that cannot verify each other, in three steps, each
// done on every unit of the relation before the next starts:
//
//  1. trust the new CA besides the old one (the bundle holds both; node
//     certificates are still the old CA's);
//  2. re-issue every node certificate from the new CA (both still trusted);
//  3. drop the old CA from every bundle.
//
// The step is in the CA secret's content (ca-next-key present: step 1; a
// ca-bundle CA besides ca-cert: step 2) and in the application data
// (KeyCARotation, which also names step 3, whose secret content is the
// same as no rotation's). Every unit reports what its TLS directory holds
// (KeyCATrust); the leader moves to the next step only when every unit in
// the relation reports the current one done. Nothing here does I/O.

// Relation data keys of a rotation.
const (
	// KeyCATrust is the unit data key: the fingerprints of the CAs this
	// unit's node trusts and of the CA that issued its certificate (JSON
	// CATrust), as its TLS directory holds them.
	KeyCATrust = "ca-trust"
	// KeyCARotation is the application data key of a rotation in progress
	// (JSON Rotation); absent otherwise.
	KeyCARotation = "ca-rotation"
)

// The steps.
const (
	StepTrustNew = 1
	StepReissue  = 2
	StepDropOld  = 3
	// Steps is the number of steps.
	Steps = 3
)

// CATrust is a unit's report.
type CATrust struct {
	// Trusts are the fingerprints of the CAs in the unit's bundle, sorted.
	Trusts []string `json:"trusts"`
	// Issuer is the fingerprint of the CA that issued its certificate.
	Issuer string `json:"issuer"`
}

// Encode is the report's unit data value.
func (t CATrust) Encode() string {
	t.Trusts = slices.Clone(t.Trusts)
	slices.Sort(t.Trusts)
	t.Trusts = slices.Compact(t.Trusts)
	data, _ := json.Marshal(t)
	return string(data)
}

// ParseCATrust reads a unit's report; ok is false for a missing or
// malformed one.
func ParseCATrust(v string) (t CATrust, ok bool) {
	if v == "" || json.Unmarshal([]byte(v), &t) != nil || t.Issuer == "" || len(t.Trusts) == 0 {
		return CATrust{}, false
	}
	return t, true
}

// Rotation is a rotation in progress: its step and the fingerprints of the
// CA it replaces and of the one replacing it. Step 0 means none.
type Rotation struct {
	Step int    `json:"step"`
	From string `json:"from"`
	To   string `json:"to"`
}

// Encode is the rotation's application data value ("" for none).
func (r Rotation) Encode() string {
	if r.Step == 0 {
		return ""
	}
	data, _ := json.Marshal(r)
	return string(data)
}

// ParseRotation reads the application data value (a zero Rotation when
// absent or malformed).
func ParseRotation(v string) Rotation {
	var r Rotation
	if v == "" || json.Unmarshal([]byte(v), &r) != nil || r.Step < 1 || r.Step > Steps || r.From == "" || r.To == "" {
		return Rotation{}
	}
	return r
}

// CAContent is what the CA secret's content says, as fingerprints.
type CAContent struct {
	// Issuing is ca-cert's fingerprint: the CA units issue from.
	Issuing string
	// Others are the fingerprints of ca-bundle's CAs other than ca-cert.
	Others []string
	// Next is the fingerprint of the CA whose key is ca-next-key (step 1),
	// "" when there is none.
	Next string
}

// CurrentRotation is the rotation the secret content and the application
// data describe together. The content decides steps 1 and 2 (a secret
// revision and the application data commit together, but a leader that
// finds them apart trusts the content, which is what the units act on);
// step 3 is the application data's when its target is the issuing CA and
// the content holds no other CA.
func CurrentRotation(c CAContent, app Rotation) Rotation {
	switch {
	case c.Next != "" && len(c.Others) > 0:
		return Rotation{Step: StepTrustNew, From: c.Issuing, To: c.Next}
	case c.Next == "" && len(c.Others) > 0:
		return Rotation{Step: StepReissue, From: c.Others[0], To: c.Issuing}
	case app.Step == StepDropOld && app.To == c.Issuing:
		return app
	}
	return Rotation{}
}

// Done reports whether a unit's report shows step r.Step done.
func (r Rotation) Done(t CATrust) bool {
	trusts := func(fp string) bool { return slices.Contains(t.Trusts, fp) }
	switch r.Step {
	case StepTrustNew:
		return trusts(r.From) && trusts(r.To)
	case StepReissue:
		return t.Issuer == r.To && trusts(r.To)
	case StepDropOld:
		return t.Issuer == r.To && slices.Equal(t.Trusts, []string{r.To})
	}
	return true
}

// Waiting returns the units (sorted by unit number) whose report does not
// show step r.Step done, given every unit in the relation and their raw
// KeyCATrust values.
func (r Rotation) Waiting(units []string, reports map[string]string) []string {
	var out []string
	for _, u := range units {
		t, ok := ParseCATrust(reports[u])
		if !ok || !r.Done(t) {
			out = append(out, u)
		}
	}
	slices.SortFunc(out, compareUnits)
	return out
}

func compareUnits(a, b string) int {
	na, erra := UnitAgentID(a)
	nb, errb := UnitAgentID(b)
	if erra == nil && errb == nil && len(na) != len(nb) {
		return len(na) - len(nb)
	}
	if erra == nil && errb == nil {
		return strings.Compare(na, nb)
	}
	return strings.Compare(a, b)
}

// Next is the step after r ("" Step 0 after step 3).
func (r Rotation) Next() Rotation {
	if r.Step >= Steps {
		return Rotation{}
	}
	r.Step++
	return r
}

// WaitingMessage says what a rotation waits for, for the leader's status:
// "rotating the cluster CA: step 2/3, waiting for dqlite-controller/2 to
// re-issue its certificate".
func (r Rotation) WaitingMessage(waiting []string) string {
	msg := fmt.Sprintf("rotating the cluster CA: step %d/%d", r.Step, Steps)
	if len(waiting) == 0 {
		return msg
	}
	one := len(waiting) == 1
	var what string
	switch r.Step {
	case StepTrustNew:
		what = "to trust the new CA"
	case StepReissue:
		what = "to re-issue their certificates"
		if one {
			what = "to re-issue its certificate"
		}
	case StepDropOld:
		what = "to drop the old CA"
	}
	return fmt.Sprintf("%s, waiting for %s %s", msg, strings.Join(waiting, ", "), what)
}
