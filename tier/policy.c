/*
 * tier/policy.c — which sealed object to evict next.
 *
 * Two policies, one mechanism. Objects sit in per-class LRU lists; the class
 * is floor(log2(hits + 1)) capped at nclasses - 1, so an object moves up a
 * class each time its hit count doubles. Each access stamps the object with
 * the policy clock, which advances by the object's size in bytes, so the
 * clock measures bytes of traffic. An object's priority is
 *
 *     stamp + class * bonus,   bonus = weight * capacity (bytes)
 *
 * and the victim is the lowest priority over the list heads (each list is
 * already in stamp order). With one class this is plain LRU ("lru"). With
 * five classes and weight 1/2 ("mq", the default) an object that has been
 * reused survives about half a cache's worth of extra traffic per doubling
 * of its hits: on the Mooncake conversation trace that beats LRU at 10% and
 * 25% of the footprint and ties it at 50% (kvfs-bench replay, README).
 *
 * Locking: the caller holds `lock` for every *_locked function and while
 * iterating. The lock is taken on seal, on each open that hits, on drop,
 * and during victim selection — never on the read/write data path.
 */
#include <errno.h>
#include <string.h>

#include "tier/tier_i.h"

static const struct {
	const char *name;
	unsigned nclasses;
	unsigned weight_pct;
} policies[] = {
	{"mq", 5, 50},
	{"lru", 1, 0},
};

int policy_init(struct policy *p, const char *name, uint64_t capacity)
{
	memset(p, 0, sizeof(*p));
	for (size_t i = 0; i < sizeof(policies) / sizeof(policies[0]); i++) {
		if (strcmp(name, policies[i].name) != 0)
			continue;
		p->name = policies[i].name;
		p->nclasses = policies[i].nclasses;
		p->bonus = capacity * policies[i].weight_pct / 100;
		pthread_mutex_init(&p->lock, NULL);
		for (unsigned c = 0; c < p->nclasses; c++)
			p->heads[c].prev = p->heads[c].next = &p->heads[c];
		return 0;
	}
	return -EINVAL;
}

void policy_destroy(struct policy *p)
{
	if (p->name)
		pthread_mutex_destroy(&p->lock);
}

static unsigned class_of(const struct policy *p, uint32_t hits)
{
	unsigned c = 63u - (unsigned)__builtin_clzll((uint64_t)hits + 1);

	return c < p->nclasses ? c : p->nclasses - 1;
}

static void link_tail(struct policy *p, struct policy_node *n)
{
	struct policy_node *h = &p->heads[n->cls];

	n->prev = h->prev;
	n->next = h;
	h->prev->next = n;
	h->prev = n;
	n->linked = true;
	p->count++;
}

static void unlink_node(struct policy *p, struct policy_node *n)
{
	p->count--;
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->prev = n->next = NULL;
	n->linked = false;
}

void policy_insert_locked(struct policy *p, struct policy_node *n, uint64_t bytes)
{
	p->clock += bytes;
	n->stamp = p->clock;
	n->cls = (uint8_t)class_of(p, n->hits);
	link_tail(p, n);
}

void policy_hit_locked(struct policy *p, struct policy_node *n, uint64_t bytes)
{
	if (n->hits != UINT32_MAX)
		n->hits++;
	if (!n->linked)
		return;
	unlink_node(p, n);
	policy_insert_locked(p, n, bytes);
}

void policy_remove_locked(struct policy *p, struct policy_node *n)
{
	if (n->linked)
		unlink_node(p, n);
}

void policy_iter_init(struct policy *p, struct policy_iter *it)
{
	for (unsigned c = 0; c < p->nclasses; c++)
		it->cur[c] = p->heads[c].next;
}

struct policy_node *policy_iter_next(struct policy *p, struct policy_iter *it)
{
	struct policy_node *best = NULL;
	uint64_t best_pri = 0;
	unsigned best_c = 0;

	for (unsigned c = 0; c < p->nclasses; c++) {
		struct policy_node *n = it->cur[c];
		uint64_t pri;

		if (n == &p->heads[c])
			continue;
		pri = n->stamp + c * p->bonus;
		if (!best || pri < best_pri) {
			best = n;
			best_pri = pri;
			best_c = c;
		}
	}
	if (best)
		it->cur[best_c] = best->next;
	return best;
}
