// What the signed-in customer owns, loaded once per view.
import { listAll } from './api';

export interface Project {
  id: string;
  name: string;
  description?: string;
  active?: boolean;
}

export interface JobType {
  id: string;
  projectId?: string;
  catalog?: boolean;
  name: string;
  description?: string;
  baseCostCents?: string;
  currencyCode?: string;
  enabled?: boolean;
  processorType?: string;
}

export const FINAL = ['JOB_STATUS_SUCCEEDED', 'JOB_STATUS_FAILED', 'JOB_STATUS_CANCELLED'];
export const STATUSES = ['JOB_STATUS_PENDING', 'JOB_STATUS_SCHEDULED', 'JOB_STATUS_RUNNING', ...FINAL];
export const PRIORITIES = ['PRIORITY_LEVEL_LOW', 'PRIORITY_LEVEL_MEDIUM', 'PRIORITY_LEVEL_HIGH', 'PRIORITY_LEVEL_CRITICAL'];

export const projectsOf = (customerId: string) =>
  listAll<Project>(`/v1/customers/${customerId}/projects`, 'projects');

export const jobTypesOf = (projectId: string) => listAll<JobType>(`/v1/projects/${projectId}/jobTypes`, 'jobTypes');

// The operator's catalog: usable by every project, served by shared runners, priced per job.
export const catalogTypes = () => listAll<JobType>('/v1/jobTypes', 'jobTypes');
