/*
 * dist_int.h — what the distribution layer's two files share: the term
 * codec (dist_ext.c: dx_term <-> Erlang external term format, through
 * erl_interface) and the pid/ref translation it needs from the node table
 * (dist.c). Internal to the runtime; see include/dspex/node.h.
 */
#ifndef DX_DIST_INT_H
#define DX_DIST_INT_H

#include <ei.h>

#include "dx_internal.h"

/* Bit 51 of a remote pid marks a registered-name handle (dx_node_name_pid);
 * bit 51 of a remote ref marks the tag of a call that came from another
 * node. Both stay below the node bits (DX__NODE_SHIFT). */
#define DX__DIST_NAME_BIT (1ull << 51)
#define DX__DIST_CALL_BIT (1ull << 51)

/* Encode t (not NULL) onto x. DX_EINVAL for what the format cannot carry
 * here (a pid of an unknown node, a call tag), DX_ENOMEM. */
int dx__ext_encode(ei_x_buff *x, const dx_term *t);
/* Decode one term at buf[*idx] (a version byte already skipped) into *out,
 * advancing *idx; no byte at or past buf[len] is read, so buf may be a
 * packet straight off the wire. DX_ENOTSUP for terms dx_term cannot hold
 * (improper lists, bit strings, ports, funs, integers beyond 64 bits,
 * atoms with a NUL or longer than DX_ATOM_MAX_LEN bytes), DX_EINVAL for
 * malformed or truncated input (also an atom or node name that is not
 * UTF-8, or a ref of more than 5 words), DX_ELIMIT when nesting exceeds 512 or the
 * ref table is full, DX_ENOMEM. *out is NULL on failure. */
int dx__ext_decode(const char *buf, int len, int *idx, dx_term **out);

/* Check that the term at buf[*idx] lies wholly before len, header by
 * header, and advance *idx past it; builds nothing. A distribution packet's
 * control tuple is checked so before erl_interface, which trusts every
 * length field, decodes it. DX_EINVAL (truncated or malformed), DX_ENOTSUP
 * (a port, fun, bit string or other kind of term dx_term cannot hold). */
int dx__ext_check(const char *buf, int len, int *idx);

/* Pid/ref translation (dist.c); the caller holds the node lock. */
int dx__dist_pid_out(dx_pid pid, erlang_pid *out);
int dx__dist_pid_in(const erlang_pid *in, dx_pid *out);
int dx__dist_ref_out(dx_ref ref, erlang_ref *out);
int dx__dist_ref_in(const erlang_ref *in, dx_ref *out);
/* A registered-name handle encodes as {Name, Node}: its two parts. */
int dx__dist_name_of(dx_pid pid, const char **name, const char **node);

/* The codec without a network, for fuzz targets and white-box tests: this
 * node is called self (a valid "alive@host") with the given creation, so
 * pids and refs translate as on a running node, but nothing listens,
 * publishes or runs. dx__dist_codec_close forgets the other nodes and refs
 * the codec learned. DX_EINVAL (bad name), DX_ESTATE (a node is running or
 * the codec is already open). Host thread; not while a node runs. */
int dx__dist_codec_open(const char *self, unsigned creation);
void dx__dist_codec_close(void);

#endif
