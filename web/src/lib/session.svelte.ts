// Who is signed in: the identity service's session (cookie) and the user it belongs to.
import { ApiError, del, get, patch, post, setCsrfToken } from './api';

export type Role = 'ROLE_OWNER' | 'ROLE_ADMIN' | 'ROLE_DEVELOPER' | 'ROLE_BILLING' | 'ROLE_VIEWER';
export type AccountKind = 'PRINCIPAL_KIND_ADMIN' | 'PRINCIPAL_KIND_RESELLER' | 'PRINCIPAL_KIND_CUSTOMER';

export interface User {
  name: string;
  userId: string;
  email: string;
  displayName?: string;
  role: Role;
  accountKind: AccountKind;
  customerId?: string;
  resellerId?: string;
  totpEnabled?: boolean;
  locale?: string;
  timeZone?: string;
}

interface SessionReply {
  user: User;
  csrfToken: string;
}

export const session = $state<{ user: User | null; checked: boolean }>({ user: null, checked: false });

function adopt(reply: SessionReply): User {
  setCsrfToken(reply.csrfToken);
  session.user = reply.user;
  return reply.user;
}

export async function restore(): Promise<User | null> {
  try {
    return adopt(await get<SessionReply>('/v1/sessions/current'));
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401) throw err;
    session.user = null;
    return null;
  } finally {
    session.checked = true;
  }
}

export async function signIn(email: string, password: string, totpCode?: string): Promise<User> {
  return adopt(await post<SessionReply>('/v1/sessions', { email, password, ...(totpCode ? { totpCode } : {}) }));
}

export async function signOut(): Promise<void> {
  try {
    await del('/v1/sessions/current');
  } finally {
    setCsrfToken('');
    session.user = null;
  }
}

export async function savePreferences(changes: { locale?: string; timeZone?: string }): Promise<void> {
  const user = session.user;
  if (!user) return;
  const mask = Object.keys(changes).join(',');
  session.user = { ...user, ...(await patch<User>(`/v1/users/${user.userId}`, changes, { updateMask: mask })) };
}

// What a role may do. The services enforce it; the console only leaves out what would be refused.
const WRITERS: Role[] = ['ROLE_OWNER', 'ROLE_ADMIN', 'ROLE_DEVELOPER'];
const PAYERS: Role[] = ['ROLE_OWNER', 'ROLE_ADMIN', 'ROLE_BILLING'];
const ADMINISTRATORS: Role[] = ['ROLE_OWNER', 'ROLE_ADMIN'];

export const can = {
  operateJobs: (user: User | null) => !!user && WRITERS.includes(user.role),
  configure: (user: User | null) => !!user && WRITERS.includes(user.role),
  administer: (user: User | null) => !!user && ADMINISTRATORS.includes(user.role),
  topUp: (user: User | null) => !!user && PAYERS.includes(user.role) && user.accountKind !== 'PRINCIPAL_KIND_CUSTOMER',
  // PATCH wallet: its low-balance threshold (the customer's own too; the credit limit stays the operator's)
  manageWallet: (user: User | null) => !!user && PAYERS.includes(user.role)
};

export const isOperator = (user: User | null) => user?.accountKind === 'PRINCIPAL_KIND_ADMIN';
export const isReseller = (user: User | null) => user?.accountKind === 'PRINCIPAL_KIND_RESELLER';
export const isCustomer = (user: User | null) => user?.accountKind === 'PRINCIPAL_KIND_CUSTOMER';
