/*
 * rdma/fabric.c — the libfabric endpoint: provider choice, memory
 * registration, the address vector.
 *
 * One code path for every provider: an FI_EP_RDM endpoint (efa natively;
 * verbs and tcp through the ofi_rxm utility provider) with FI_MSG for the
 * control protocol and FI_RMA for the bytes, one completion queue for both
 * directions, and remote CQ data for write immediates.
 *
 * Memory registration is hinted the way verbs needs it (FI_MR_LOCAL,
 * FI_MR_VIRT_ADDR, FI_MR_ALLOCATED, FI_MR_PROV_KEY), so every local buffer
 * is registered and its descriptor passed on every provider. What the
 * provider returned decides the two things that differ (DESIGN §5; tcp
 * returns an empty mr_mode):
 *   - addressing: FI_MR_VIRT_ADDR -> remote addresses are the target's
 *     virtual addresses; otherwise offsets from the start of the region
 *     (rdma_mr_raddr/rdma_mr_local in rdma_i.h);
 *   - keys: FI_MR_PROV_KEY -> the provider chooses; otherwise we request
 *     unique keys from a counter started at a random value.
 *
 * No state beyond struct rdma_fab; libfabric is opened FI_THREAD_SAFE so
 * the progress thread and callers may use the endpoint concurrently.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "core/log.h"
#include "core/util.h"
#include "rdma/rdma_i.h"

#define FI_API FI_VERSION(1, 17)

static const struct {
	const char *name; /* --fabric value */
	const char *prov; /* libfabric provider string */
	bool by_ip;	  /* addressed by IP: --listen applies */
} fabrics[] = {
	{"efa", "efa", false},
	{"verbs", "verbs;ofi_rxm", true},
	{"tcp", "tcp;ofi_rxm", true},
};

/* "HOST:PORT" or "[HOST]:PORT" into @host and @port. */
static int parse_listen(const char *s, char *host, size_t hlen, char *port, size_t plen)
{
	const char *colon;
	size_t n;

	if (s[0] == '[') {
		const char *close = strchr(s, ']');

		if (!close || close[1] != ':')
			return -EINVAL;
		n = (size_t)(close - s - 1);
		if (n == 0 || n >= hlen)
			return -EINVAL;
		memcpy(host, s + 1, n);
		host[n] = '\0';
		colon = close + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon || colon == s)
			return -EINVAL;
		n = (size_t)(colon - s);
		if (n >= hlen)
			return -EINVAL;
		memcpy(host, s, n);
		host[n] = '\0';
	}
	n = strlen(colon + 1);
	if (n == 0 || n >= plen || strspn(colon + 1, "0123456789") != n || atoi(colon + 1) > 65535)
		return -EINVAL;
	memcpy(port, colon + 1, n + 1);
	return 0;
}

static struct fi_info *make_hints(const char *prov)
{
	struct fi_info *h = fi_allocinfo();

	if (!h)
		return NULL;
	h->caps = FI_MSG | FI_RMA | FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE;
	h->mode = FI_CONTEXT | FI_CONTEXT2 | FI_RX_CQ_DATA;
	h->ep_attr->type = FI_EP_RDM;
	h->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
	h->domain_attr->threading = FI_THREAD_SAFE;
	h->tx_attr->op_flags = 0;
	h->fabric_attr->prov_name = strdup(prov);
	if (!h->fabric_attr->prov_name) {
		fi_freeinfo(h);
		return NULL;
	}
	return h;
}

/* fi_getinfo for one provider; @return 0 and the first fitting info. */
static int try_provider(int i, const char *host, const char *port, struct fi_info **out)
{
	struct fi_info *hints = make_hints(fabrics[i].prov), *info = NULL, *it;
	const char *node = fabrics[i].by_ip ? host : NULL;
	const char *svc = fabrics[i].by_ip ? port : NULL;
	int rc;

	if (!hints)
		return -ENOMEM;
	rc = fi_getinfo(FI_API, node, svc, node || svc ? FI_SOURCE : 0, hints, &info);
	fi_freeinfo(hints);
	if (rc)
		return rc == -FI_ENODATA ? -ENODEV : rc;
	/* Immediates are 4 bytes (DESIGN §5): the provider must carry them. */
	for (it = info; it; it = it->next)
		if (it->domain_attr->cq_data_size >= 4 && it->ep_attr->type == FI_EP_RDM)
			break;
	if (!it) {
		fi_freeinfo(info);
		return -ENODEV;
	}
	*out = fi_dupinfo(it);
	fi_freeinfo(info);
	return *out ? 0 : -ENOMEM;
}

int rdma_fab_open(struct rdma_fab *f, const char *fabric, const char *listen, char *err,
		  size_t errlen)
{
	char host[256] = "", port[16] = "";
	const char *hp = NULL, *pp = NULL;
	struct fi_cq_attr cq_attr = {.format = FI_CQ_FORMAT_DATA, .size = 4096};
	struct fi_av_attr av_attr = {.type = FI_AV_UNSPEC};
	bool any = !fabric || strcmp(fabric, "auto") == 0;
	int rc = -ENODEV, chosen = -1;
	uint64_t start;

	memset(f, 0, sizeof(*f));
	if (listen) {
		if (parse_listen(listen, host, sizeof(host), port, sizeof(port))) {
			snprintf(err, errlen, "--listen %s: expected HOST:PORT", listen);
			return -EINVAL;
		}
		hp = host;
		pp = port;
	}
	for (int i = 0; i < (int)KVFS_ARRAY_SIZE(fabrics); i++) {
		if (!any && strcmp(fabric, fabrics[i].name) != 0)
			continue;
		chosen = i;
		rc = try_provider(i, hp, pp, &f->info);
		if (rc == 0)
			break;
		if (any)
			log_debug("rdma: fabric %s not available (%s)", fabrics[i].name,
				  fi_strerror(-rc));
	}
	if (chosen < 0) {
		snprintf(err, errlen, "--fabric %s: expected auto, verbs, efa or tcp", fabric);
		return -EINVAL;
	}
	if (rc) {
		snprintf(err, errlen, "no fabric provider for %s%s%s: %s", any ? "auto" : fabric,
			 listen ? " at " : "", listen ? listen : "", fi_strerror(-rc));
		return rc == -ENOMEM ? rc : -ENODEV;
	}

	f->virt_addr = f->info->domain_attr->mr_mode & FI_MR_VIRT_ADDR;
	f->prov_key = f->info->domain_attr->mr_mode & FI_MR_PROV_KEY;
	f->rx_cq_data = f->info->mode & FI_RX_CQ_DATA;
	snprintf(f->prov, sizeof(f->prov), "%s", f->info->fabric_attr->prov_name);
	if (RAND_bytes((unsigned char *)&start, sizeof(start)) != 1)
		start = (uint64_t)(uintptr_t)f ^ 0x9e3779b97f4a7c15ull;
	atomic_init(&f->next_key, (start & 0x0000ffffffff0000ull) | 1);

	rc = fi_fabric(f->info->fabric_attr, &f->fabric, NULL);
	if (rc)
		goto fail;
	rc = fi_domain(f->fabric, f->info, &f->domain, NULL);
	if (rc)
		goto fail;
	cq_attr.wait_obj = FI_WAIT_UNSPEC;
	rc = fi_cq_open(f->domain, &cq_attr, &f->cq, NULL);
	if (rc) {
		cq_attr.wait_obj = FI_WAIT_NONE;
		rc = fi_cq_open(f->domain, &cq_attr, &f->cq, NULL);
	} else {
		f->can_wait = true;
	}
	if (rc)
		goto fail;
	rc = fi_av_open(f->domain, &av_attr, &f->av, NULL);
	if (rc)
		goto fail;
	rc = fi_endpoint(f->domain, f->info, &f->ep, NULL);
	if (rc)
		goto fail;
	rc = fi_ep_bind(f->ep, &f->av->fid, 0);
	if (rc)
		goto fail;
	rc = fi_ep_bind(f->ep, &f->cq->fid, FI_TRANSMIT | FI_RECV);
	if (rc)
		goto fail;
	rc = fi_enable(f->ep);
	if (rc)
		goto fail;
	f->name_len = sizeof(f->name);
	rc = fi_getname(&f->ep->fid, f->name, &f->name_len);
	if (rc == 0 && (f->name_len == 0 || f->name_len > RDMA_ADDR_MAX))
		rc = -FI_ETOOSMALL;
	if (rc)
		goto fail;
	log_info("rdma: fabric %s (provider %s, mr_mode %s%s, %s progress)%s", fabrics[chosen].name,
		 f->prov, f->virt_addr ? "virt-addr" : "offsets",
		 f->prov_key ? "+prov-key" : "+app-keys",
		 f->info->domain_attr->data_progress == FI_PROGRESS_AUTO ? "auto" : "manual",
		 any ? " chosen by auto" : "");
	return 0;
fail:
	snprintf(err, errlen, "fabric %s: %s", f->prov, fi_strerror(-rc));
	rdma_fab_close(f);
	return rc < 0 && rc > -4096 ? rc : -EIO;
}

void rdma_fab_close(struct rdma_fab *f)
{
	if (f->ep)
		fi_close(&f->ep->fid);
	if (f->av)
		fi_close(&f->av->fid);
	if (f->cq)
		fi_close(&f->cq->fid);
	if (f->domain)
		fi_close(&f->domain->fid);
	if (f->fabric)
		fi_close(&f->fabric->fid);
	if (f->info)
		fi_freeinfo(f->info);
	f->ep = NULL;
	f->av = NULL;
	f->cq = NULL;
	f->domain = NULL;
	f->fabric = NULL;
	f->info = NULL;
}

int rdma_mr_reg(struct rdma_fab *f, void *base, uint64_t len, uint64_t access, struct rdma_mr *mr)
{
	uint64_t want = f->prov_key ? 0 : atomic_fetch_add(&f->next_key, 1);
	int rc;

	memset(mr, 0, sizeof(*mr));
	rc = fi_mr_reg(f->domain, base, len, access, 0, want, 0, &mr->mr, NULL);
	if (rc)
		return rc;
	mr->base = base;
	mr->len = len;
	mr->desc = fi_mr_desc(mr->mr);
	mr->key = fi_mr_key(mr->mr);
	return 0;
}

void rdma_mr_close(struct rdma_mr *mr)
{
	if (mr->mr)
		fi_close(&mr->mr->fid);
	memset(mr, 0, sizeof(*mr));
}
