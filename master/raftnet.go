package master

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// streamLayer is a TCP raft.StreamLayer whose advertised address may be a
// host name. raft.NewTCPTransport insists on an IP; under docker compose the
// stable identity of a master is its service name, and dialing the name on
// every new connection finds a restarted container at its new IP.
type streamLayer struct {
	ln        net.Listener
	advertise net.Addr
}

// hostAddr is a net.Addr for host:port strings that may hold a name.
type hostAddr string

func (a hostAddr) Network() string { return "tcp" }
func (a hostAddr) String() string  { return string(a) }

// newStreamLayer listens on bind and advertises advertise (empty: the bound
// address, with an unspecified host replaced by 127.0.0.1).
func newStreamLayer(ln net.Listener, advertise string) (*streamLayer, error) {
	if advertise == "" {
		advertise = ln.Addr().String()
		host, port, _ := net.SplitHostPort(advertise)
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			advertise = net.JoinHostPort("127.0.0.1", port)
		}
	}
	host, port, err := net.SplitHostPort(advertise)
	if err != nil || host == "" || port == "" || port == "0" {
		return nil, fmt.Errorf("raft advertise address %q must be host:port with a real port", advertise)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return nil, fmt.Errorf("raft advertise address %q must not be unspecified (0.0.0.0)", advertise)
	}
	return &streamLayer{ln: ln, advertise: hostAddr(advertise)}, nil
}

// Dial implements raft.StreamLayer; the address is resolved on every dial.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout, KeepAlive: 15 * time.Second}
	return d.Dial("tcp", string(address))
}

// Accept implements net.Listener.
func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.ln.Accept()
	if err != nil && errors.Is(err, net.ErrClosed) {
		return nil, err
	}
	return c, err
}

// Close implements net.Listener.
func (s *streamLayer) Close() error { return s.ln.Close() }

// Addr implements net.Listener: the advertised address, possibly a name.
func (s *streamLayer) Addr() net.Addr { return s.advertise }
